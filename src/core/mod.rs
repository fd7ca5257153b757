//! Pure, synchronous, deterministic state machines (implementation pending).
