//! A reload's part for the agents: the `[[source]]` and `[[destination]]` tables compared by
//! kind and name. Unchanged ones keep running untouched; removed ones stop; changed ones
//! stop and start again with the new table; added ones start. Every new or changed table is
//! checked (token files read, names resolved) before anything stops, so a bad one refuses the
//! reload and the old agents keep running.

use std::time::{Duration, Instant};

use super::{AgentHandle, destination_spec, source_spec, start_destination, start_source};
use crate::config::{DestinationConfig, EngineConfig, SourceConfig};
use crate::error::Result;
use crate::shard::{Command, ShardHandle};

/// How long a stopped agent's sockets get to close (its listener's address may be the new
/// table's), and how long a start retries a listener address still held by them.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// One agent table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Table<'a> {
    Source(&'a SourceConfig),
    Destination(&'a DestinationConfig),
}

impl Table<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Table::Source(_) => "source",
            Table::Destination(_) => "destination",
        }
    }

    fn name(&self) -> String {
        match self {
            Table::Source(s) => s.display_name(),
            Table::Destination(d) => d.display_name(),
        }
    }

    /// Its index among the tables of its kind in `cfg`, which holds it.
    fn index(&self, cfg: &EngineConfig) -> usize {
        match self {
            Table::Source(s) => cfg.sources.iter().position(|x| std::ptr::eq(x, *s)),
            Table::Destination(d) => cfg.destinations.iter().position(|x| std::ptr::eq(x, *d)),
        }
        .expect("a table of cfg")
    }

    /// Loads it (a table of `cfg`) as a start would (token, files, addresses) without
    /// starting it.
    fn check(&self, cfg: &EngineConfig) -> Result<()> {
        let i = self.index(cfg);
        match self {
            Table::Source(_) => source_spec(cfg, i).map(drop),
            Table::Destination(_) => destination_spec(cfg, i).map(drop),
        }
    }

    fn start(&self, cfg: &EngineConfig, shard: &ShardHandle) -> Result<AgentHandle> {
        let i = self.index(cfg);
        match self {
            Table::Source(_) => start_source(cfg, i, shard),
            Table::Destination(_) => start_destination(cfg, i, shard),
        }
    }
}

fn tables(cfg: &EngineConfig) -> Vec<Table<'_>> {
    let sources = cfg.sources.iter().map(Table::Source);
    sources
        .chain(cfg.destinations.iter().map(Table::Destination))
        .collect()
}

/// The tables of `new` that `old` does not have as they are (added or changed).
fn fresh<'a>(old: &EngineConfig, new: &'a EngineConfig) -> Vec<Table<'a>> {
    let before = tables(old);
    tables(new)
        .into_iter()
        .filter(|t| !before.contains(t))
        .collect()
}

/// Checks the added and changed tables of `new` (compared with `old`).
pub(crate) fn check(old: &EngineConfig, new: &EngineConfig) -> Result<()> {
    fresh(old, new).iter().try_for_each(|t| t.check(new))
}

/// Makes `agents` run the tables of `new` (compared with `old`, which they run now).
pub(crate) fn apply(
    old: &EngineConfig,
    new: &EngineConfig,
    agents: &mut Vec<AgentHandle>,
    shards: &[ShardHandle],
) -> Result<()> {
    let after = tables(new);
    for gone in tables(old).into_iter().filter(|t| !after.contains(t)) {
        let (kind, name) = (gone.kind(), gone.name());
        let Some(i) = agents
            .iter()
            .position(|a| a.shared.kind == kind && a.shared.name == name)
        else {
            continue;
        };
        let handle = agents.remove(i);
        for s in shards {
            s.send(Command::Tunnel(crate::shard::tunnel::Cmd::StopAgent(
                handle.shared.clone(),
            )));
        }
        handle.shared.wait_finished(STOP_WAIT);
        tracing::info!(agent = %name, kind, "agent stopped by the reload");
    }
    for (i, t) in fresh(old, new).into_iter().enumerate() {
        let shard = &shards[(agents.len() + i) % shards.len()];
        let end = Instant::now() + STOP_WAIT;
        // A changed source may listen where its old self did, until its sockets are gone.
        let handle = loop {
            match t.start(new, shard) {
                Ok(h) => break h,
                Err(crate::Error::Listen { .. }) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        };
        agents.push(handle);
    }
    Ok(())
}
