//! prefork-selfpipe (skeleton: being written).
