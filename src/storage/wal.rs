//! The write-ahead log (implementation pending).
