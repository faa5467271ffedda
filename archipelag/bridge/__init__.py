"""The bridge: the one process through which the coordinator's services reach the hosts' agents.

A Ray driver unpickles whatever it reads back, and any member of a cluster can choose what that is (it can run a
closure inside any actor with ``__ray_call__``). So the coordinator's services do not call a host's agent
through Ray: they ask the bridge, a driver of its own, in JSON lines (``wire``), and check every field of what it
answers. What a host sends can at worst take over the bridge, which holds no account, key or credit. This is the
seam along which the hosts' Ray cluster separates from the coordinator's (README, "What a joined node can still
do").
"""
