//! prefork-proc (skeleton: being written).
