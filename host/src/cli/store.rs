//! Commands that read or act on a store beside a running host: `deliveries`,
//! `replay`, `ingest`, `clients`; and `migrate`, which copies one store into
//! another.
//!
//! Reads open the store themselves (WAL lets them run beside the host). The
//! writes (`replay`, `clients enable`) go through the running host's API when
//! one answers at `server.listen` and an operator token is at hand
//! (`server.admin_tokens` or `HOOKWASM_ADMIN_TOKEN`), so the host applies them
//! at once; with no host running they write the store, which a host reads
//! when it starts.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use hookwasm::config::Config;
use hookwasm::store::{Store, inspect::Filter};

pub async fn deliveries(
    config: &Path,
    client: Option<&str>,
    state: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<ExitCode> {
    let config = Config::load(config)?;
    if let Some(c) = client {
        known_client(&config, c).await?;
    }
    if let Some(s) = state
        && hookwasm::model::State::parse(s).is_none()
    {
        bail!(
            "--state {s:?} is not one of pending, held, plugin_error, retrying, delivered, skipped, failed"
        );
    }
    let filter = Filter {
        client: client.map(str::to_string),
        state: state.map(str::to_string),
        limit,
        ..Filter::default()
    };
    let rows = Store::open_existing(&config.store)
        .await?
        .deliveries(filter)
        .await?;
    for d in &rows {
        if json {
            println!("{}", serde_json::to_string(d)?);
            continue;
        }
        println!(
            "{}  {:<14} {:<16} {:<13} {}  {}",
            d.id,
            d.client_id,
            d.event,
            d.state,
            format_ms(d.created_at),
            d.reason.as_deref().unwrap_or("")
        );
        if let Some(p) = &d.plugin {
            println!("    plugin {p}");
        }
        for a in &d.attempts {
            let what = match (a.status, &a.error_kind) {
                (Some(s), _) => format!("HTTP {s}"),
                (None, Some(k)) => format!("{k}: {}", a.error.as_deref().unwrap_or("")),
                _ => "?".into(),
            };
            println!(
                "    attempt {} at {} took {} ms: {what}",
                a.n,
                format_ms(a.started_at),
                a.duration_ms
            );
        }
        if let (Some(at), "retrying") = (d.next_attempt_at, d.state.as_str()) {
            println!("    next attempt at {}", format_ms(at));
        }
    }
    if rows.is_empty() && !json {
        eprintln!("no deliveries");
    }
    Ok(ExitCode::SUCCESS)
}

fn format_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub async fn replay(
    config: &Path,
    delivery: Option<&str>,
    client: Option<&str>,
    since: Option<&str>,
) -> Result<ExitCode> {
    let config = Config::load(config)?;
    if delivery.is_none() && client.is_none() {
        bail!("say what to replay: --delivery msg_… or --client ID --since TIME");
    }
    if let Some(c) = client {
        known_client(&config, c).await?;
    }
    let since_ms = since.map(parse_since).transpose()?;
    if let Some(api) = running_api(&config).await {
        let (path, body) = match delivery {
            Some(id) => (
                format!("/v1/admin/deliveries/{id}/replay"),
                serde_json::json!({}),
            ),
            None => (
                "/v1/admin/replay".to_string(),
                serde_json::json!({ "client": client, "since": since_ms.map(|t| t.to_string()) }),
            ),
        };
        let replayed = match api.post(&path, body).await {
            Ok(answer) => answer["replayed"].as_u64().unwrap_or(0),
            // Unknown, or on its way already: the host says which.
            Err(ApiRefusal::Status(404, why)) => bail!("no delivery matches: {why}"),
            Err(e) => bail!("{e}"),
        };
        if replayed == 0 {
            bail!("no delivery matches");
        }
        println!("{replayed} deliveries will be sent again by the running host");
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open_existing(&config.store).await?;
    let seqs = store
        .select(
            delivery.map(str::to_string),
            client.map(str::to_string),
            since_ms,
            None,
        )
        .await?;
    if seqs.is_empty() {
        bail!("no delivery matches");
    }
    let n = store.replay(seqs).await.map_err(|e| anyhow!(e))?;
    println!("{n} deliveries will be sent again by the running host");
    Ok(ExitCode::SUCCESS)
}

/// A time, as every command and route reads one (`hookwasm::model::parse_time`).
fn parse_since(s: &str) -> Result<i64> {
    hookwasm::model::parse_time(s).ok_or_else(|| {
        anyhow!("--since {s:?} is neither a time (2026-05-24T21:00:00Z) nor a duration (2h)")
    })
}

/// Posts each line of `file` to the running host, a few at a time, with a bar.
pub async fn ingest(config: &Path, file: &Path) -> Result<ExitCode> {
    use futures_util::StreamExt;
    let config = Config::load(config)?;
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let lines: Vec<(usize, String)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect();
    let addr = config.server.listen;
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let url = format!("http://{host}/v1/events");
    let http = reqwest::Client::new();
    let bar = indicatif::ProgressBar::new(lines.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let token = config.server.ingest_token.clone();
    let results: Vec<(usize, Result<(), String>)> = futures_util::stream::iter(lines)
        .map(|(n, line)| {
            let (http, url, token, bar) = (http.clone(), url.clone(), token.clone(), bar.clone());
            async move {
                let mut req = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(line);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let r = match req.send().await {
                    Ok(resp) if resp.status().as_u16() == 202 => Ok(()),
                    Ok(resp) => {
                        let status = resp.status();
                        Err(format!(
                            "{status}: {}",
                            resp.text().await.unwrap_or_default().trim()
                        ))
                    }
                    Err(e) if e.is_connect() => Err(format!(
                        "no host answers at {url}; start it with `hookwasm serve`"
                    )),
                    Err(e) => Err(e.to_string()),
                };
                bar.inc(1);
                (n, r)
            }
        })
        .buffered(16)
        .collect()
        .await;
    bar.finish();
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    for (n, r) in failed.iter().take(20) {
        eprintln!("line {n}: {}", r.as_ref().unwrap_err());
    }
    println!(
        "{} events accepted, {} refused",
        results.len() - failed.len(),
        failed.len()
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn clients_list(config: &Path) -> Result<ExitCode> {
    let config = Config::load(config)?;
    let store = Store::open_existing(&config.store).await?;
    let mut ids: Vec<String> = config.clients.iter().map(|c| c.id.clone()).collect();
    ids.extend(store.api_state().await?.clients.into_iter().map(|c| c.id));
    for c in store.client_rows(ids).await? {
        let health = match (&c.disabled_reason, c.failing_since) {
            (Some(r), _) => format!("DISABLED: {r}"),
            (None, Some(t)) => format!("failing since {}", format_ms(t)),
            (None, None) => "ok".into(),
        };
        let counts: Vec<String> = c.counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
        println!("{:<16} {health}   {}", c.client_id, counts.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn clients_enable(config: &Path, id: &str) -> Result<ExitCode> {
    let config = Config::load(config)?;
    known_client(&config, id).await?;
    if let Some(api) = running_api(&config).await {
        api.post(&format!("/v1/clients/{id}/resume"), serde_json::json!({}))
            .await
            .map_err(|e| anyhow!("{e}"))?;
        println!("client {id} enabled; the running host resumes its deliveries now");
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open_existing(&config.store).await?;
    store.set_client(id, None, None).await?;
    println!("client {id} enabled; the running host resumes its deliveries within seconds");
    Ok(ExitCode::SUCCESS)
}

/// Whether `id` is a client of the config file or one created through the API.
async fn known_client(config: &Config, id: &str) -> Result<()> {
    if config.client(id).is_some() {
        return Ok(());
    }
    let stored = match Store::open_existing(&config.store).await {
        Ok(store) => store.api_state().await?.clients,
        Err(_) => Vec::new(),
    };
    if stored.iter().any(|c| c.id == id) {
        return Ok(());
    }
    bail!("no client {id:?} in the config or among the clients created through the API")
}

/// Why a call to the running host's API gave nothing.
#[derive(Debug, thiserror::Error)]
enum ApiRefusal {
    #[error("{0}")]
    Unreachable(String),
    #[error("{1}")]
    Status(u16, String),
}

/// The API of a host running with this config.
struct RunningApi {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl RunningApi {
    /// POSTs `body` to `path` as the operator; the answer, or why not.
    async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, ApiRefusal> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                ApiRefusal::Unreachable(format!("the host at {} did not answer: {e}", self.base))
            })?;
        let status = resp.status();
        let answer: serde_json::Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            let why = answer["error"].as_str().unwrap_or("(no reason given)");
            return Err(ApiRefusal::Status(
                status.as_u16(),
                format!("the host said {status}: {why}"),
            ));
        }
        Ok(answer)
    }
}

/// The running host's API, if a host answers at `server.listen` and an
/// operator token is configured; `None` means: write the store.
async fn running_api(config: &Config) -> Option<RunningApi> {
    let addr = config.server.listen;
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let base = format!("http://{host}");
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .ok()?;
    let alive = http
        .get(format!("{base}/healthz"))
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    if !alive {
        return None;
    }
    match config.server.admin_tokens.first() {
        Some(token) => Some(RunningApi {
            base,
            token: token.clone(),
            http,
        }),
        None => {
            eprintln!(
                "hookwasm: a host is running at {base}, but no operator token is configured \
                 (server.admin_tokens or HOOKWASM_ADMIN_TOKEN): writing the store; the host picks it up within seconds"
            );
            None
        }
    }
}

/// `hookwasm migrate --from FILE.db --to postgres://…`: the copy, with a
/// progress bar, then each table's counts on both sides; any difference fails.
pub async fn migrate(from: &Path, to: &str) -> Result<ExitCode> {
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        bail!("--to must be a postgres://user@host:port/database url");
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {per_sec}")
            .expect("a valid template"),
    );
    let counts =
        hookwasm::store::copy::sqlite_to_pg(from, to, |n| bar.set_length(n), |n| bar.inc(n))
            .await?;
    bar.finish_and_clear();
    let mut differ = false;
    for c in &counts {
        let mark = if c.from == c.to { "" } else { "  DIFFERS" };
        differ |= c.from != c.to;
        println!("{:<16} {:>10} -> {:<10}{mark}", c.table, c.from, c.to);
    }
    if differ {
        bail!("the counts differ: the copy is not the store it came from");
    }
    println!(
        "copied {}; point the hosts at it with [store] url",
        from.display()
    );
    Ok(ExitCode::SUCCESS)
}
