"""Bad inputs: the case table of what a new user might type or feed, run by the tests and counted here
(docs/benchmarks/bad_inputs.md)."""
