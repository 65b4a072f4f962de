//! The `hookwasm` command line. Every error a person can cause ends here as one
//! line naming the thing and what to do, with a non-zero exit.

mod cli;

// glibc's allocator spent a fifth of the host's time under load (many small,
// short-lived buffers across threads); mimalloc handles that pattern far better.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hookwasm",
    version,
    about = "Phraseanet webhooks, filtered and transformed per client by WebAssembly plugins"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host until SIGINT or SIGTERM.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Try and inspect plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// A receiver for trying things out: prints every delivery it gets.
    Receive {
        /// Address to listen on, such as 127.0.0.1:9000.
        #[arg(long)]
        listen: String,
        /// The client's secret; each delivery's signature is then checked.
        #[arg(long)]
        secret: Option<String>,
        /// Answer with this status instead of 200 (to try retries).
        #[arg(long, default_value_t = 200)]
        status: u16,
    },
    /// List recent deliveries and their attempts, from the store.
    Deliveries {
        #[arg(long)]
        config: PathBuf,
        /// Only this client's.
        #[arg(long)]
        client: Option<String>,
        /// Only deliveries in this state (pending, held, plugin_error, retrying, delivered, skipped, failed).
        #[arg(long)]
        state: Option<String>,
        /// How many, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send deliveries again: one, or all of a client's since a time.
    Replay {
        #[arg(long)]
        config: PathBuf,
        /// The delivery's id (msg_…).
        #[arg(long, conflicts_with_all = ["client", "since"])]
        delivery: Option<String>,
        /// Every delivery of this client…
        #[arg(long, requires = "since")]
        client: Option<String>,
        /// …created since this time (RFC 3339, or a duration ago such as 2h).
        #[arg(long)]
        since: Option<String>,
    },
    /// Post a file of events, one JSON document per line, to the running host.
    Ingest {
        #[arg(long)]
        config: PathBuf,
        /// The file of events (JSON lines); - for standard input.
        file: PathBuf,
    },
    /// Look at or enable clients.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Copy an embedded store (SQLite) into an empty PostgreSQL database:
    /// events, deliveries, attempts, clients, tokens, secrets and plugins.
    Migrate {
        /// The SQLite store ([store] path of the host's config).
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL database: postgres://user@host:port/database.
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Run one plugin on one event and print the verdict as JSON, or on a folder
    /// of events and compare each verdict with the one expected.
    #[command(group = clap::ArgGroup::new("input").required(true).args(["event", "events"]))]
    Test {
        plugin: PathBuf,
        /// The event, a Phraseanet JSON document.
        #[arg(long)]
        event: Option<PathBuf>,
        /// A folder of events (`NAME.json`), each with its expected verdict
        /// (`NAME.expected.json`).
        #[arg(long)]
        events: Option<PathBuf>,
        /// With --events: write the verdicts as the new expectations.
        #[arg(long, requires = "events")]
        update: bool,
        /// A client config entry KEY=VALUE handed to the plugin (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// The client id the plugin is told.
        #[arg(long, default_value = "test")]
        client: String,
    },
    /// Say whether a file is a plugin this host can load, and what it imports.
    Check { plugin: PathBuf },
    /// Build the plugin project in a folder (Rust, Python or JavaScript, as
    /// `plugin new` writes them) and print the path of the `.wasm`.
    Build {
        /// The project's folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Replace a Rust plugin project's copy of the SDK (`hookwasm-plugin/`) with
    /// this hookwasm's.
    UpdateSdk {
        /// The project's folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Write a new plugin project, ready to build and test.
    New {
        /// The plugin's name: lowercase letters, digits and `-`.
        name: String,
        /// rust, python or js.
        #[arg(long, default_value = "rust")]
        lang: String,
        /// The folder to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Each client's health as the store records it.
    List {
        #[arg(long)]
        config: PathBuf,
    },
    /// Enable a client the host disabled (after a 410, or failing too long).
    Enable {
        id: String,
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let quiet_default = matches!(args.command, Command::Plugin(_));
    // Before any thread starts: taking the socket clears LISTEN_FDS.
    let inherited = match &args.command {
        Command::Serve { .. } => match cli::serve::inherited_listener() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("hookwasm: {}", cli::one_line(&e));
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    cli::init_logging(quiet_default);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hookwasm: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            Command::Serve { config } => cli::serve::serve(&config, inherited).await,
            Command::Plugin(PluginCommand::Test {
                plugin,
                event,
                events,
                update,
                config,
                client,
            }) => match (event, events) {
                (Some(event), _) => {
                    cli::plugin::plugin_test(&plugin, &event, &config, &client).await
                }
                (None, Some(dir)) => {
                    cli::plugin::plugin_test_folder(&plugin, &dir, &config, &client, update).await
                }
                (None, None) => unreachable!("clap requires one"),
            },
            Command::Plugin(PluginCommand::New { name, lang, dir }) => {
                let made = cli::scaffold::new_plugin(&name, &lang, &dir)?;
                println!(
                    "created {} ({lang}); its README says how to build and test it",
                    made.display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Plugin(PluginCommand::Check { plugin }) => {
                cli::plugin::plugin_check(&plugin).await
            }
            Command::Plugin(PluginCommand::Build { dir }) => {
                for wasm in cli::build::build(&dir)? {
                    println!("{}", cli::build::display_path(&wasm));
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Plugin(PluginCommand::UpdateSdk { dir }) => {
                let (before, after) = cli::scaffold::update_sdk(&dir)?;
                println!(
                    "updated the SDK in {} from {before} to {after}; rebuild the plugin",
                    dir.join("hookwasm-plugin").display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Receive {
                listen,
                secret,
                status,
            } => cli::receive::receive(&listen, secret.as_deref(), status).await,
            Command::Deliveries {
                config,
                client,
                state,
                limit,
                json,
            } => {
                cli::store::deliveries(&config, client.as_deref(), state.as_deref(), limit, json)
                    .await
            }
            Command::Replay {
                config,
                delivery,
                client,
                since,
            } => {
                cli::store::replay(
                    &config,
                    delivery.as_deref(),
                    client.as_deref(),
                    since.as_deref(),
                )
                .await
            }
            Command::Ingest { config, file } => cli::store::ingest(&config, &file).await,
            Command::Clients(ClientsCommand::List { config }) => {
                cli::store::clients_list(&config).await
            }
            Command::Clients(ClientsCommand::Enable { id, config }) => {
                cli::store::clients_enable(&config, &id).await
            }
            Command::Migrate { from, to } => cli::store::migrate(&from, &to).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hookwasm: {}", cli::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
