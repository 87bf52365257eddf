"""`lockd jepsen`: a Jepsen-style harness that runs lockd as real processes, breaks them
and checks the history of what its clients saw."""
