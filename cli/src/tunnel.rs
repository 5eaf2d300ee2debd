//! `splice-engine tunnel open|list|describe|rotate|close`: a client of the relay's tunnel
//! API (HTTP/1.1, JSON with AWS IoT Secure Tunneling's field names). It prints text, or the
//! API's JSON with `--json`; exit 1 when the API refuses (its message printed), 2 for usage.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueHint};
use serde_json::Value;
use splice_engine::{RotateSide, TunnelApi};

#[derive(Subcommand, Debug)]
pub(crate) enum TunnelCommand {
    /// Open a tunnel and print its id and its two access tokens (shown this once).
    #[command(after_help = "Examples:
  splice-engine tunnel open --api http://127.0.0.1:8480 --service SSH --thing pump-7 \\
      --source-token-file source.token --destination-token-file destination.token
  splice-engine tunnel open --service SSH --service HTTP --lifetime 2h --json")]
    Open(OpenArgs),
    /// List the tunnels, newest first (as AWS).
    #[command(after_help = "Examples:
  splice-engine tunnel list --api http://127.0.0.1:8480
  splice-engine tunnel list --thing pump-7 --json
  splice-engine tunnel list --max-results 50")]
    List(ListArgs),
    /// Describe one tunnel: services, lifetime, status, and whether each side is connected.
    #[command(after_help = "Examples:
  splice-engine tunnel describe 0b6a2f4e-6d3c-4b7a-9f0e-2d1c3b4a5f6e --json")]
    Describe(IdArgs),
    /// Replace a tunnel's access tokens (the old ones stop working; peers using them are
    /// dropped) and print the new ones.
    #[command(after_help = "Examples:
  splice-engine tunnel rotate 0b6a2f4e-6d3c-4b7a-9f0e-2d1c3b4a5f6e --side destination \\
      --destination-token-file destination.token")]
    Rotate(RotateArgs),
    /// Close a tunnel: both peers get a WebSocket close frame, its tokens stop working.
    #[command(after_help = "Examples:
  splice-engine tunnel close 0b6a2f4e-6d3c-4b7a-9f0e-2d1c3b4a5f6e
  splice-engine tunnel close 0b6a2f4e-6d3c-4b7a-9f0e-2d1c3b4a5f6e --delete")]
    Close(CloseArgs),
}

/// Where the API is, and how to talk to it.
#[derive(Args, Debug)]
pub(crate) struct ApiArgs {
    /// The relay's tunnel API (http://HOST:PORT).
    #[arg(
        long,
        value_name = "URL",
        env = "SPLICE_TUNNEL_API",
        default_value = "http://127.0.0.1:8480"
    )]
    pub(crate) api: String,
    /// A file holding the API's bearer token (the relay's --api-token-file) [default: none].
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) api_token_file: Option<PathBuf>,
    /// Print the API's JSON answer (AWS IoT Secure Tunneling's field names) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Where new access tokens go besides the answer.
#[derive(Args, Debug)]
pub(crate) struct TokenFiles {
    /// Write the source access token into this file (mode 0600) instead of printing it
    /// [default: printed].
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) source_token_file: Option<PathBuf>,
    /// Write the destination access token into this file (mode 0600) instead of printing it
    /// [default: printed].
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) destination_token_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct OpenArgs {
    /// A service the destination offers (1 to 128 characters of A-Z a-z 0-9 : _ -);
    /// repeatable [default: none, a V1 tunnel with one unnamed service].
    #[arg(long = "service", value_name = "NAME")]
    pub(crate) services: Vec<String>,
    /// How long the tunnel lives, in whole seconds (e.g. 30m, 2h; AWS takes whole minutes,
    /// our relay also shorter, such as 10s) [default: the relay's, 12h].
    #[arg(long, value_name = "DURATION", value_parser = parse_lifetime)]
    pub(crate) lifetime: Option<Duration>,
    /// The thing (device) the tunnel reaches, for `list --thing` [default: none].
    #[arg(long, value_name = "NAME")]
    pub(crate) thing: Option<String>,
    /// A description [default: none].
    #[arg(long, value_name = "TEXT")]
    pub(crate) description: Option<String>,
    #[command(flatten)]
    pub(crate) files: TokenFiles,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    /// Only the tunnels of this thing [default: all].
    #[arg(long, value_name = "NAME")]
    pub(crate) thing: Option<String>,
    /// One page of at most N tunnels (1 to 100), newest first; the answer's `nextToken`
    /// (printed after the table) asks for the next [default: all, in one answer].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) max_results: Option<u32>,
    /// Start after the position that a previous page's `nextToken` names.
    #[arg(long, value_name = "TOKEN")]
    pub(crate) next_token: Option<String>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(Args, Debug)]
pub(crate) struct IdArgs {
    /// The tunnel's id.
    #[arg(value_name = "ID")]
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(Args, Debug)]
pub(crate) struct RotateArgs {
    /// The tunnel's id.
    #[arg(value_name = "ID")]
    pub(crate) id: String,
    /// Which access tokens to replace.
    #[arg(long, value_name = "SIDE", value_parser = ["source", "destination", "both"])]
    pub(crate) side: String,
    /// Bind the new tokens to this client token (32 to 128 characters of A-Z a-z 0-9 -): only
    /// an agent that brings it may use them [default: none]. A value given on the command line
    /// is visible to every user of the machine (ps, /proc/PID/cmdline); the agents take their
    /// access token from --token-file or the AWSIOT_TUNNEL_ACCESS_TOKEN environment variable.
    #[arg(long, value_name = "TOKEN", allow_hyphen_values = true)]
    pub(crate) client_token: Option<String>,
    #[command(flatten)]
    pub(crate) files: TokenFiles,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(Args, Debug)]
pub(crate) struct CloseArgs {
    /// The tunnel's id.
    #[arg(value_name = "ID")]
    pub(crate) id: String,
    /// Forget the tunnel too (it no longer shows in `list`).
    #[arg(long)]
    pub(crate) delete: bool,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

/// `--lifetime`: a duration in whole seconds.
fn parse_lifetime(s: &str) -> Result<Duration, String> {
    // humantime would suggest `90ms`, which is refused below: name the units that work.
    if !s.is_empty() && s.trim().chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{s:?} needs a unit: {s}m (minutes, AWS's maxLifetimeTimeoutMinutes), {s}s or {s}h"
        ));
    }
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() || d.subsec_nanos() != 0 {
        return Err(format!(
            "{s:?} is not a whole number of seconds (e.g. 30m, 2h, 10s)"
        ));
    }
    Ok(d)
}

/// What a call failed on.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The API answered with an error status: exit 1.
    Refused(String),
    /// Anything else (no connection, a bad file): exit 1 too, with its own words.
    Other(anyhow::Error),
}

impl From<splice_engine::Error> for Failure {
    fn from(e: splice_engine::Error) -> Self {
        match e {
            e @ splice_engine::Error::TunnelApi {
                status: Some(_), ..
            } => Failure::Refused(e.to_string()),
            e => Failure::Other(e.into()),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(m) => f.write_str(m),
            Failure::Other(e) => write!(f, "{e:#}"),
        }
    }
}

/// Runs a `tunnel` subcommand, printing to `out`.
pub(crate) fn run(cmd: TunnelCommand, out: &mut impl Write) -> Result<(), Failure> {
    match cmd {
        TunnelCommand::Open(a) => {
            let services: Vec<&str> = a.services.iter().map(String::as_str).collect();
            let answer = client(&a.api)?.open_json_for(
                &services,
                a.lifetime,
                a.thing.as_deref(),
                a.description.as_deref(),
            )?;
            let shown = save_tokens(&answer, &a.files)?;
            if a.api.json {
                print_json(out, &shown)?;
            } else {
                writeln!(out, "tunnel {} opened", text(&answer["tunnelId"])).context("stdout")?;
                print_tokens(out, &answer, &shown, &a.files)?;
            }
        }
        TunnelCommand::List(a) => {
            let answer = client(&a.api)?.list_page(
                a.thing.as_deref(),
                a.max_results,
                a.next_token.as_deref(),
            )?;
            if a.api.json {
                print_json(out, &answer)?;
            } else {
                let empty = Vec::new();
                let all = answer["tunnelSummaries"].as_array().unwrap_or(&empty);
                if all.is_empty() {
                    writeln!(out, "no tunnels").context("stdout")?;
                } else {
                    writeln!(
                        out,
                        "{:36}  {:6}  {:20}  {:11}  DESCRIPTION",
                        "ID", "STATUS", "CREATED", "PAIRING"
                    )
                    .context("stdout")?;
                }
                for t in all {
                    writeln!(
                        out,
                        "{:36}  {:6}  {:20}  {:11}  {}",
                        text(&t["tunnelId"]),
                        text(&t["status"]),
                        time(&t["createdAt"]),
                        t["pairing"]["kind"].as_str().unwrap_or("token"),
                        t["description"].as_str().unwrap_or("")
                    )
                    .context("stdout")?;
                }
                if let Some(next) = answer["nextToken"].as_str() {
                    writeln!(out, "more: --next-token {next}").context("stdout")?;
                }
            }
        }
        TunnelCommand::Describe(a) => {
            let answer = client(&a.api)?.describe(&a.id)?;
            if a.api.json {
                print_json(out, &answer)?;
            } else {
                describe(out, &answer["tunnel"]).context("stdout")?;
            }
        }
        TunnelCommand::Rotate(a) => {
            let side = match a.side.as_str() {
                "source" => RotateSide::Source,
                "destination" => RotateSide::Destination,
                _ => RotateSide::Both,
            };
            // A file for a token this rotation does not make would be left as it is, while
            // the answer seemed to say it was written: refuse before anything changes.
            let unmade = match side {
                RotateSide::Source => Some((
                    "--destination-token-file",
                    "destination",
                    "source",
                    &a.files.destination_token_file,
                )),
                RotateSide::Destination => Some((
                    "--source-token-file",
                    "source",
                    "destination",
                    &a.files.source_token_file,
                )),
                RotateSide::Both => None,
            };
            if let Some((flag, other, this, Some(_))) = unmade {
                return Err(anyhow::anyhow!(
                    "command line: {flag}: `--side {this}` makes no new {other} token; give \
                     `--side both`, or leave {flag} out"
                )
                .into());
            }
            let answer = client(&a.api)?.rotate_json(&a.id, side, a.client_token.as_deref())?;
            let shown = save_tokens(&answer, &a.files)?;
            if a.api.json {
                print_json(out, &shown)?;
            } else {
                writeln!(
                    out,
                    "tunnel {}: new access tokens",
                    text(&answer["tunnelId"])
                )
                .context("stdout")?;
                print_tokens(out, &answer, &shown, &a.files)?;
            }
        }
        TunnelCommand::Close(a) => {
            let answer = client(&a.api)?.close(&a.id, a.delete)?;
            if a.api.json {
                print_json(out, &answer)?;
            } else {
                let what = if a.delete {
                    "closed and deleted"
                } else {
                    "closed"
                };
                writeln!(out, "tunnel {} {what}", a.id).context("stdout")?;
            }
        }
    }
    Ok(())
}

/// The library's API client for `--api` and `--api-token-file`.
fn client(api: &ApiArgs) -> Result<TunnelApi, Failure> {
    let c = TunnelApi::new(&api.api).map_err(|e| match e {
        splice_engine::Error::Address { addr, why } => {
            Failure::Other(anyhow::anyhow!("--api {addr:?}: {why}"))
        }
        e => Failure::from(e),
    })?;
    match &api.api_token_file {
        Some(f) => Ok(c.bearer_token_file(f)?),
        None => Ok(c),
    }
}

/// A JSON string's text, or the JSON itself.
fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// Epoch seconds as RFC 3339 (UTC, to the second).
fn time(v: &Value) -> String {
    v.as_f64()
        .filter(|s| *s >= 0.0)
        .map(|s| {
            let t = std::time::UNIX_EPOCH + Duration::from_secs(s as u64);
            humantime::format_rfc3339_seconds(t).to_string()
        })
        .unwrap_or_else(|| "-".into())
}

fn describe(out: &mut impl Write, t: &Value) -> std::io::Result<()> {
    writeln!(out, "tunnel:       {}", text(&t["tunnelId"]))?;
    writeln!(out, "status:       {}", text(&t["status"]))?;
    if let Some(d) = t["description"].as_str() {
        writeln!(out, "description:  {d}")?;
    }
    match (
        t["pairing"]["kind"].as_str(),
        t["pairing"]["identity"].as_str(),
    ) {
        (Some(kind), Some(identity)) => writeln!(out, "pairing:      {kind} {identity}")?,
        _ => writeln!(out, "pairing:      token")?,
    }
    let d = &t["destinationConfig"];
    if let Some(thing) = d["thingName"].as_str() {
        writeln!(out, "thing:        {thing}")?;
    }
    let services: Vec<String> = d["services"]
        .as_array()
        .map(|s| s.iter().map(text).collect())
        .unwrap_or_default();
    let services = if services.is_empty() {
        "(one unnamed service, V1)".to_string()
    } else {
        services.join(", ")
    };
    writeln!(out, "services:     {services}")?;
    let timeout = &t["timeoutConfig"];
    // Our relay writes the exact seconds beside AWS's whole minutes.
    let seconds = timeout["maxLifetimeTimeoutSeconds"].as_f64().or_else(|| {
        timeout["maxLifetimeTimeoutMinutes"]
            .as_f64()
            .map(|m| m * 60.0)
    });
    let ends = match (t["createdAt"].as_f64(), seconds) {
        (Some(c), Some(s)) => format!(", ends {}", time(&(c + s).into())),
        _ => String::new(),
    };
    let lifetime = match seconds {
        Some(s) if s % 60.0 == 0.0 => format!("{} minutes", s / 60.0),
        Some(s) => format!("{s} seconds"),
        None => "-".into(),
    };
    writeln!(out, "lifetime:     {lifetime}{ends}")?;
    for (label, key) in [
        ("source:      ", "sourceConnectionState"),
        ("destination: ", "destinationConnectionState"),
    ] {
        let s = &t[key];
        writeln!(
            out,
            "{label} {} (since {})",
            text(&s["status"]),
            time(&s["lastUpdatedAt"])
        )?;
    }
    let bytes = &t["bytes"];
    if bytes.is_object() {
        writeln!(
            out,
            "bytes:        {} source to destination, {} back",
            text(&bytes["sourceToDestination"]),
            text(&bytes["destinationToSource"])
        )?;
    }
    writeln!(out, "created:      {}", time(&t["createdAt"]))?;
    writeln!(out, "updated:      {}", time(&t["lastUpdatedAt"]))?;
    Ok(())
}

/// Writes the answer's tokens into the files asked for; returns the answer without the
/// tokens that went into files (so they are not printed too).
fn save_tokens(answer: &Value, files: &TokenFiles) -> anyhow::Result<Value> {
    let mut shown = answer.clone();
    for (key, file) in [
        ("sourceAccessToken", &files.source_token_file),
        ("destinationAccessToken", &files.destination_token_file),
    ] {
        let (Some(file), Some(token)) = (file, answer[key].as_str()) else {
            continue;
        };
        write_secret(file, token)?;
        if let Some(o) = shown.as_object_mut() {
            o.remove(key);
        }
    }
    Ok(shown)
}

/// `token` and a newline into `path`, readable by its owner only.
fn write_secret(path: &Path, token: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its mode: make it private too.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    writeln!(f, "{token}").with_context(|| format!("cannot write {}", path.display()))
}

/// The tokens of `answer`: those in `shown` printed, the others named by the file they went
/// into (`save_tokens`).
fn print_tokens(
    out: &mut impl Write,
    answer: &Value,
    shown: &Value,
    files: &TokenFiles,
) -> anyhow::Result<()> {
    for (label, key, file) in [
        ("source", "sourceAccessToken", &files.source_token_file),
        (
            "destination",
            "destinationAccessToken",
            &files.destination_token_file,
        ),
    ] {
        if let Some(token) = shown[key].as_str() {
            writeln!(out, "{label} access token: {token}").context("stdout")?;
        } else if let Some(f) = file.as_ref().filter(|_| answer[key].is_string()) {
            writeln!(out, "{label} access token: written to {}", f.display()).context("stdout")?;
        }
    }
    Ok(())
}

fn print_json(out: &mut impl Write, v: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v).context("JSON")?;
    writeln!(out, "{text}").context("stdout")
}
