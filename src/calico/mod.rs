//! Reading Calico's objects (pure): which setting turns the overlay on or
//! off, parsed exactly as Calico's own code parses it (each parser cites it).
//!
//! - [`model`]: levels, effective values, the guarded kinds, and when a
//!   change lowers encapsulation;
//! - [`values`]: one parser per Calico setting; [`podenv`]: calico-node's
//!   environment resolved as the kubelet resolves it;
//! - [`readers`]: what each kind of object says; [`installation`]: the
//!   Tigera operator's Installation, pool by pool;
//! - [`overlay`]: puts them together ([`overlay::detect_switch`]).

pub mod installation;
pub mod model;
pub mod overlay;
pub mod podenv;
pub mod readers;
pub mod values;
