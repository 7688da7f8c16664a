//! The `souq` binary: serve (the default), migrate, and create an organisation.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use souq::config::LogFormat;
use souq::domain::{Core, NewOrganisation};
use souq::{Config, Server};

// mimalloc rather than the system's: sockets allocate and free small frames all the time,
// and with it an idle socket costs about 3.7 KiB of RSS instead of 5.8 (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "souq",
    version,
    about = "Real-time chat backend for marketplaces and support desks"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (what `souq` with no subcommand does).
    Serve(Config),
    /// Apply database migrations and exit.
    Migrate(Config),
    /// Manage organisations.
    #[command(subcommand)]
    Org(OrgCommand),
}

#[derive(Debug, Subcommand)]
enum OrgCommand {
    /// Create an organisation that can sign in for a token.
    Create {
        /// Sign-in email.
        #[arg(long)]
        email: String,
        /// Sign-in password (at least 8 characters).
        #[arg(long, env = "SOUQ_ORG_PASSWORD")]
        password: String,
        /// The organisation's subdomain, its name at sign-in.
        #[arg(long)]
        subdomain: String,
        /// Product lines to create (repeat the flag); tokens are issued per addon.
        #[arg(long = "addon", default_values_t = ["live_chat".to_string(), "seller_buyer".to_string()])]
        addons: Vec<String>,
        #[command(flatten)]
        config: Config,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        None => cli.config.log_format,
        Some(Command::Serve(c) | Command::Migrate(c)) => c.log_format,
        Some(Command::Org(OrgCommand::Create { config, .. })) => config.log_format,
    };
    let logs = tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "souq=info".into()),
    );
    match format {
        LogFormat::Text => logs.init(),
        // One object a line: time, level, message and fields flattened beside them.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let result = match cli.command {
        None => serve(cli.config).await,
        Some(Command::Serve(config)) => serve(config).await,
        Some(Command::Migrate(config)) => migrate(config).await,
        Some(Command::Org(OrgCommand::Create {
            email,
            password,
            subdomain,
            addons,
            config,
        })) => {
            create_org(
                config,
                NewOrganisation {
                    email,
                    password,
                    subdomain,
                    addons,
                },
            )
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("souq: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let server = Server::build(&config).await.map_err(|e| e.to_string())?;
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, database = %redact(&config.database_url), "souq is listening");
    server.run_until_stopped(shutdown_signal()).await;
    tracing::info!("souq stopped");
    Ok(())
}

async fn open_core(config: &Config) -> Result<Core, String> {
    config.validate().map_err(|e| e.to_string())?;
    let store = souq::store::Store::open(&config.database_url, 2)
        .await
        .map_err(|e| format!("cannot open the database: {e}"))?;
    // The CLI has no sockets: its events reach an empty hub.
    let bus = souq::bus::Bus::new(std::sync::Arc::new(souq::hub::Hub::new()));
    let place = config.file_place().map_err(|e| e.to_string())?;
    let objects = souq::objects::Objects::open(&place)
        .map_err(|e| format!("cannot open the file store: {e}"))?;
    Core::new(
        store,
        config.limits(),
        std::sync::Arc::new(bus),
        souq::Clock::system(),
        std::sync::Arc::default(),
        souq::domain::Files::new(objects, config.file_limits()),
    )
    .map_err(|e| format!("cannot start the message writer: {e}"))
}

async fn migrate(config: Config) -> Result<(), String> {
    open_core(&config).await?;
    println!("migrations are up to date");
    Ok(())
}

async fn create_org(config: Config, new: NewOrganisation) -> Result<(), String> {
    let core = open_core(&config).await?;
    let subdomain = new.subdomain.clone();
    let addons = new.addons.join(", ");
    let id = core
        .create_organisation(new)
        .await
        .map_err(|e| e.to_string())?;
    println!("created organisation {id} ({subdomain}) with addons: {addons}");
    Ok(())
}

/// The database url without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
