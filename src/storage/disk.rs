//! The `Disk` seam (implementation pending).
