//! CPU backend. PLACEHOLDER: to be replaced by the CPU-backend helper.
