"""`make test`: the suite in two pytest processes that run at the same time.

Tests that make the test process a Ray driver (marker ``ray_driver``) run apart from the rest, since Ray's signal
handlers break wasmtime's trap handling in a shared process. They spend much of their time waiting on processes
they started (about half of the two cores here sat idle through them when the processes ran one after the
other), so the two processes run side by side. The browser tests (``browser``) and a few that start the network
in processes of their own (``beside_ray``) join the Ray-driver ones, so both processes take about as long. The other process's output comes as it runs; the Ray-driver process's goes to
``.archipelag/test-ray-driver.log``, printed when it ends. Each process's every test, with its time, is in
``.archipelag/test-ray-driver.xml`` and ``test-rest.xml`` (JUnit XML) afterwards.

Exit status: 0 when both passed (one of them may have had nothing selected, pytest's 5), 5 when neither ran a
test, else the first failure's. Ctrl-C reaches both processes (they share this one's process group), and each
tears down what its tests started.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTEST = [str(ROOT / ".venv" / "bin" / "pytest"), "-q", "-ra", "--durations=20"]
BESIDE_RAY = "ray_driver or browser or beside_ray"
NOTHING_SELECTED = 5


def main(args: list[str]) -> int:
    log_path = ROOT / ".archipelag" / "test-ray-driver.log"
    log_path.parent.mkdir(exist_ok=True)
    started = time.monotonic()
    with log_path.open("w") as log:
        driver = subprocess.Popen([*PYTEST, "-m", BESIDE_RAY, f"--junitxml={log_path.with_suffix('.xml')}", *args],
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        rest = subprocess.Popen([*PYTEST, "-m", f"not ({BESIDE_RAY})", f"--junitxml={log_path.parent / 'test-rest.xml'}",
                                 *args], cwd=ROOT, stdin=subprocess.DEVNULL)
        try:
            rest_rc = rest.wait()
            print(f"\n--- the Ray-driver and browser tests ({log_path.relative_to(ROOT)}) ---", flush=True)
            driver_rc = driver.wait()
        except KeyboardInterrupt:  # both got the SIGINT: wait while they tear down what they started
            for process in (rest, driver):
                process.wait(timeout=120)
            return 130
    sys.stdout.write(log_path.read_text())
    print(f"--- both test processes ended {time.monotonic() - started:.0f} s after they started ---")
    if rest_rc == driver_rc == NOTHING_SELECTED:
        return NOTHING_SELECTED  # no test ran at all
    failed = [rc for rc in (rest_rc, driver_rc) if rc not in (0, NOTHING_SELECTED)]
    return failed[0] if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
