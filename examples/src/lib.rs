//! Example programs built on `mesh`.
