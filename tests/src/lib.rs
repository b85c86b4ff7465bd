//! Helpers for the end-to-end tests in `tests/tests/`: locating the built binaries, running them
//! with time limits, and (later) network namespaces.
