//! Real-traffic tests: see integration/README.md.
