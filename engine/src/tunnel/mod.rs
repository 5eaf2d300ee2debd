//! The tunnel's data plane (issue 11): the agents' I/O around the sans-IO protocol code of
//! [`splice_proto::tunnel`] and [`splice_proto::ws`].

pub(crate) mod agent;
