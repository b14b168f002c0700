//! Session listing service.
