//! The detcd simulator.
