"""Seccomp: the syscall filter a container workload runs under, one profile per sandbox tier. Pure.

Every profile denies by default (EPERM) and allows one list of syscalls an ordinary program needs — Docker's
default allow-list less what escapes or spies need: mounting, ptrace and reading other processes' memory,
namespaces (``unshare``, ``setns``, namespace flags to ``clone``), kernel modules, kexec, BPF, perf, keyrings,
io_uring, the new mount API, clock and host-name changes. The restricted tier also refuses networking
(``socket`` and the calls that only make sense on a socket one created). The profiles are built here rather than
vendored so the one list is read and reviewed in one place; Docker takes them as JSON in ``security_opt``.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any, Final

from archipelag.sandbox import Tier

EPERM: Final = 1
ENOSYS: Final = 38
# clone(2) flags that create namespaces: CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
CLONE_NAMESPACE_FLAGS: Final = 0x7E020000


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


ALLOWED: Final = _words("""
    accept accept4 access adjtimex alarm arch_prctl bind brk capget capset chdir chmod chown clock_getres
    clock_gettime clock_nanosleep close close_range connect copy_file_range creat dup dup2 dup3 epoll_create
    epoll_create1 epoll_ctl epoll_pwait epoll_pwait2 epoll_wait eventfd eventfd2 execve execveat exit exit_group
    faccessat faccessat2 fadvise64 fallocate fchdir fchmod fchmodat fchown fchownat fcntl fdatasync fgetxattr
    flistxattr flock fork fremovexattr fsetxattr fstat fstatfs fsync ftruncate futex futex_waitv futimesat
    get_robust_list get_thread_area getcpu getcwd getdents getdents64 getegid geteuid getgid getgroups getitimer
    getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid getresuid getrlimit getrusage
    getsid getsockname getsockopt gettid gettimeofday getuid getxattr inotify_add_watch inotify_init
    inotify_init1 inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents io_setup io_submit ioctl
    ioprio_get ioprio_set kill lchown lgetxattr link linkat listen listxattr llistxattr lremovexattr lseek
    lsetxattr lstat madvise membarrier memfd_create mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall
    mmap mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedsend mq_unlink mremap msgctl msgget
    msgrcv msgsnd msync munlock munlockall munmap nanosleep newfstatat open openat openat2 pause pidfd_open
    pidfd_send_signal pipe pipe2 poll ppoll prctl pread64 preadv preadv2 prlimit64 pselect6 pwrite64 pwritev
    pwritev2 read readahead readlink readlinkat readv recvfrom recvmmsg recvmsg remap_file_pages removexattr
    rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask
    rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_tgsigqueueinfo sched_get_priority_max
    sched_get_priority_min sched_getaffinity sched_getattr sched_getparam sched_getscheduler
    sched_rr_get_interval sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp
    select semctl semget semop semtimedop sendfile sendmmsg sendmsg sendto set_robust_list set_thread_area
    set_tid_address setfsgid setfsuid setgid setgroups setitimer setpgid setpriority setregid setresgid setresuid
    setreuid setrlimit setsid setsockopt setuid setxattr shmat shmctl shmdt shmget shutdown sigaltstack
    signalfd signalfd4 socket socketpair splice stat statfs statx symlink symlinkat sync sync_file_range syncfs
    sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_settime
    timerfd_create timerfd_gettime timerfd_settime times tkill truncate umask uname unlink unlinkat utime
    utimensat utimes vfork vmsplice wait4 waitid write writev
""")

# Never allowed, in any tier; listed so a reader sees they are left out on purpose (the default denies them).
DENIED: Final = _words("""
    mount umount2 fsopen fsconfig fsmount fspick move_mount open_tree mount_setattr pivot_root chroot
    ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd unshare setns clone3 bpf perf_event_open
    userfaultfd keyctl add_key request_key init_module finit_module delete_module kexec_load kexec_file_load
    reboot swapon swapoff sethostname setdomainname acct quotactl syslog vhangup iopl ioperm settimeofday
    clock_settime clock_adjtime open_by_handle_at name_to_handle_at lookup_dcookie fanotify_init
    io_uring_setup io_uring_enter io_uring_register personality modify_ldt move_pages mbind set_mempolicy
    get_mempolicy migrate_pages
""")

# Refused in the restricted tier on top: a workload there has no business with sockets at all.
NETWORK: Final = _words("""
    socket socketpair bind connect listen accept accept4 getsockname getpeername getsockopt setsockopt
    sendto recvfrom sendmsg recvmsg sendmmsg recvmmsg shutdown
""")

_ARCHITECTURES: Final = [
    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
]


def allowed_syscalls(tier: Tier) -> frozenset[str]:
    names = ALLOWED - DENIED
    return names - NETWORK if tier is Tier.RESTRICTED else names


def profile(tier: Tier) -> dict[str, Any]:
    """The seccomp profile for ``tier`` in Docker's JSON format."""
    rules: list[dict[str, Any]] = [
        {"names": sorted(allowed_syscalls(tier)), "action": "SCMP_ACT_ALLOW"},
        # clone without namespace flags (threads, fork); with them it falls to the default EPERM
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
        # clone3 cannot be filtered on its flags (they sit in memory): ENOSYS makes libc fall back to clone
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
        # personality: only the harmless values Docker's default allows
        *({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
           "args": [{"index": 0, "value": value, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}
          for value in (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)),
    ]
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": EPERM, "archMap": _ARCHITECTURES,
            "syscalls": rules}


@cache
def profile_json(tier: Tier) -> str:
    """The profile as the compact JSON string ``security_opt=["seccomp=<json>"]`` takes."""
    return json.dumps(profile(tier), separators=(",", ":"), sort_keys=True)
