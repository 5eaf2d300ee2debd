//! The embedding paths: the engine inside the program that makes the load, through its
//! libraries, against the same server end as `splice-uring` (the CLI's client mode), which
//! they are compared with.
//!
//! - `c-connect`: a C program (`ffi/bench/throughput.c`) linked with libtunnel, whose
//!   `tunnel_connect` gives it a plain socket whose bytes leave as TLS (bulk, latency);
//! - `py-connect`: a Python script (`python/bench/load.py`) whose `engine.connect()` does the
//!   same (bulk), run by an interpreter that has the `splice_engine` package (the one
//!   `cargo xtask py-test` installs, or `$SPLICE_BENCH_PYTHON`).
//!
//! Each program takes `splice-load`'s arguments and prints its JSON (see
//! [`super::LoadGen`]), plus `client_cpu_s`: the CPU its engine's threads used, so the
//! client side's CPU per GiB is comparable with the CLI client process's. The engine runs one
//! shard on io_uring, as `splice-uring`'s client end does.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use super::paths::{Ctx, Endpoints, Kind, PathDef, Running, free_port, wait_listening};
use super::procs::Proc;
use super::{LoadGen, Scenario};

/// A program with the engine inside it.
pub enum Embed {
    /// libtunnel's `tunnel_connect`, from C.
    C,
    /// `engine.connect()`, from Python.
    Python,
}

/// The path each embedding path is compared with: the CLI's client mode on io_uring.
const CLI_CLIENT: &str = "splice-uring";

impl Embed {
    /// The built C client.
    fn c_client(ctx: &Ctx) -> PathBuf {
        ctx.file("c-connect-client")
    }

    /// The interpreter that has `splice_engine`.
    fn python() -> PathBuf {
        std::env::var_os("SPLICE_BENCH_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::workspace_root().join("target/py-test/venv/bin/python"))
    }

    /// Builds libtunnel (release) and the C client against it; the library's version.
    fn build_c(ctx: &Ctx) -> Result<String> {
        crate::run_cmd(crate::cargo().args(["build", "--release", "-p", "splice-tunnel-ffi"]))?;
        let root = crate::workspace_root();
        let release = root.join("target/release");
        // The library's soname is libtunnel.so.0 (ffi/build.rs), which the build does not
        // make: a link beside the client, as `install-c` makes one.
        let lib = ctx.file("lib");
        std::fs::create_dir_all(&lib)?;
        let soname = lib.join("libtunnel.so.0");
        let _ = std::fs::remove_file(&soname);
        std::os::unix::fs::symlink(release.join("libtunnel.so"), &soname)?;
        crate::run_cmd(
            Command::new("cc")
                .args(["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
                .arg(root.join("c-include"))
                .arg(root.join("ffi/bench/throughput.c"))
                .arg("-o")
                .arg(Self::c_client(ctx))
                .arg("-L")
                .arg(&release)
                .arg(format!("-Wl,-rpath,{}", lib.display()))
                .arg("-ltunnel"),
        )?;
        Ok(format!("libtunnel {}", env!("CARGO_PKG_VERSION")))
    }
}

impl PathDef for Embed {
    fn name(&self) -> &'static str {
        match self {
            Embed::C => "c-connect",
            Embed::Python => "py-connect",
        }
    }
    fn kind(&self) -> Kind {
        Kind::Ours
    }
    fn supports(&self, sc: Scenario) -> bool {
        match self {
            Embed::C => matches!(sc, Scenario::Bulk | Scenario::Latency),
            Embed::Python => sc == Scenario::Bulk,
        }
    }
    fn compared_with(&self) -> Option<&'static str> {
        Some(CLI_CLIENT)
    }
    fn check(&self, ctx: &Ctx) -> Result<String, String> {
        if ctx.probe["io_uring"] != true {
            return Err("no io_uring (the engine inside runs on it, as splice-uring does)".into());
        }
        match self {
            Embed::C => Self::build_c(ctx).map_err(|e| format!("cannot build the C client: {e:#}")),
            Embed::Python => {
                let py = Self::python();
                let out = Command::new(&py)
                    .args([
                        "-c",
                        "import splice_engine, importlib.metadata as m; \
                         print(m.version('splice-engine'))",
                    ])
                    .output();
                match out {
                    Ok(o) if o.status.success() => Ok(format!(
                        "splice_engine {}",
                        String::from_utf8_lossy(&o.stdout).trim()
                    )),
                    _ => Err(format!(
                        "{} cannot import splice_engine: run `cargo xtask py-test` (it installs \
                         the package there) or set SPLICE_BENCH_PYTHON to a python that has it",
                        py.display()
                    )),
                }
            }
        }
    }
    fn ends(&self, _: &Ctx, _: &[super::paths::Route]) -> Result<[Command; 2]> {
        bail!("{} has no client end of its own: see start()", self.name())
    }
    /// Only the server end, as `splice-uring`'s; the program is the client end.
    fn start(&self, ctx: &Ctx) -> Result<Running> {
        let (sink, echo) = (free_port()?, free_port()?);
        let mut t = String::from("driver = \"uring\"\nktls = \"off\"\nlog_level = \"warn\"\n");
        for (name, listen, backend) in [("sink", sink, ctx.sink), ("echo", echo, ctx.echo)] {
            write!(
                t,
                "\n[[forwarder]]\nname = \"{name}\"\nmode = \"server\"\nlisten = \"{listen}\"\n\
                 connect = \"{backend}\"\nmax_connections = 100000\nresumption = false\n\
                 tls_versions = [\"1.3\"]\ncert = {:?}\nkey = {:?}\n",
                ctx.cert(),
                ctx.key()
            )?;
        }
        let name = self.name();
        let conf = ctx.write(&format!("{name}-server.toml"), &t)?;
        let mut cmd = Command::new(&ctx.engine);
        cmd.arg("run").arg("--config").arg(conf);
        let mut server = Proc::spawn(
            &format!("{name} server end"),
            &mut cmd,
            &ctx.file(&format!("{name}-server.log")),
        )?;
        wait_listening(sink, &mut server)?;
        wait_listening(echo, &mut server)?;
        Ok(Running {
            endpoints: Endpoints {
                sink,
                echo,
                echo_resume: echo,
            },
            ends: vec![server],
            roles: vec!["server"],
            relay: None,
        })
    }
    fn load_gen(&self, ctx: &Ctx) -> Option<LoadGen> {
        let ca = ctx.ca().to_string_lossy().into_owned();
        let common = ["--ca", &ca, "--sni", "localhost", "--driver", "uring"].map(String::from);
        Some(match self {
            Embed::C => LoadGen {
                program: Self::c_client(ctx),
                args: common.to_vec(),
            },
            Embed::Python => {
                let script = crate::workspace_root().join("python/bench/load.py");
                let mut args = vec![script.to_string_lossy().into_owned()];
                args.extend(common);
                LoadGen {
                    program: Self::python(),
                    args,
                }
            }
        })
    }
}
