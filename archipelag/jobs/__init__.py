"""Jobs: where a job goes between the API and a host — admission, the queue, dispatch with leases and
failover, and the relay of live events. Runs in one named actor on the head (``JobsActor``); the API's
replicas reach it through ``JobsClient``."""
