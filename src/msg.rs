//! msgs
