//! Integration tests live in `tests/integration/`; this library is intentionally empty.
