//! HAProxy PROXY protocol v1 and v2: a strict, streaming-safe, sans-I/O parser and generator.
