//! Policy decisions as pure functions (SPEC §8): no I/O except resolving paths on disk.
