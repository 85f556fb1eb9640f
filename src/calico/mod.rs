//! Reading Calico's objects (pure): which setting turns the overlay on or
//! off, parsed exactly as Calico's own code parses it (each parser cites it).

pub mod installation;
pub mod overlay;
pub mod podenv;
pub mod values;
