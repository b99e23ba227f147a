//! dari-scheduler (in progress).
