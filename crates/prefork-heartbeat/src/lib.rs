//! prefork-heartbeat (skeleton: being written).
