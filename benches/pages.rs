//! Page weight benchmark (filled in below).
fn main() {}
