"""Scale: scoring, pre-selection and the data stages on synthetic pools of 10^5 to 10^7 rows
(docs/benchmarks/scale.md)."""
