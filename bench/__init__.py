"""`make bench`: the benchmarks, each printed beside the baseline it is compared with."""
