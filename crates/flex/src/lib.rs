//! FLEX engine.
