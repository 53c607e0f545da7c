//! The `sync-server` binary: `serve` (default), `migrate`, `token`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sync_server::auth::Claims;
use sync_server::config::Config;
use sync_server::telemetry;

#[derive(Parser)]
#[command(name = "sync-server", version, about = "PF-2 Sync server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Mint a JWT for development and tests.
    Token {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Roles (repeatable), e.g. `--role admin`.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Another claim, repeatable: `--claim 'projects=["p1","p2"]'` (the value is JSON, or
        /// else a string) — what sync rules' `[grants]` templates read.
        #[arg(long = "claim")]
        claims: Vec<String>,
    },
    /// The audit log's chains.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify every chain (or one tenant's) against the audit key: exit 0 with the count of
    /// entries, or 1 naming the first entry that was altered, removed or moved.
    Verify {
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PF2_LOG")
        .unwrap_or_else(|_| telemetry::DEFAULT_LOG_FILTER.into());
    // Spans go out over OTLP only when a collector is named (and, kept here, flushed at exit).
    let exporter =
        cli.config.otlp_endpoint.as_deref().map(telemetry::Exporter::otlp).transpose()?;
    tracing::subscriber::set_global_default(telemetry::subscriber(
        std::io::stderr,
        filter,
        exporter.as_ref(),
    ))?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let state = cli.config.build().await?;
            let listener = tokio::net::TcpListener::bind(&cli.config.listen)
                .await
                .with_context(|| format!("binding {}", cli.config.listen))?;
            tracing::info!(
                address = %listener.local_addr()?,
                database = state.store.backend().name(),
                "PF-2 Sync server listening"
            );
            sync_server::serve(listener, state, shutdown_signal()).await?;
            tracing::info!("stopped");
        }
        Command::Migrate => {
            cli.config.build().await?;
            tracing::info!("migrations applied");
        }
        Command::Audit { command: AuditCommand::Verify { tenant } } => {
            let key = cli.config.audit_chain_key()?;
            let store = sync_server::store::Store::connect(
                &cli.config.database_url,
                cli.config.sqlite_synchronous,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let reports = store
                .verify_audit(&key, tenant.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut broken = 0;
            let mut total = 0;
            for r in &reports {
                match &r.result {
                    Ok(n) => {
                        total += n;
                        println!(
                            "ok      {} / {}: {n} entries (head {} {}, pruned through {})",
                            r.tenant,
                            r.chain,
                            r.head.seq,
                            &r.head.hash[..r.head.hash.len().min(16)],
                            r.head.anchor.seq
                        );
                    }
                    Err(b) => {
                        broken += 1;
                        println!("BROKEN  {} / {}: {b}", r.tenant, r.chain);
                    }
                }
            }
            println!("{} chains, {total} entries verified, {broken} broken", reports.len());
            if broken > 0 {
                std::process::exit(1);
            }
        }
        Command::Token { tenant, user, ttl, roles, claims: extra } => {
            let jwt = cli.config.jwt()?;
            let now = jsonwebtoken::get_current_timestamp();
            let mut claims = Claims::new(&tenant, &user, now, ttl);
            claims.roles = roles;
            for c in extra {
                let (k, v) = c.split_once('=').context("a claim is name=value")?;
                let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::from(v));
                claims.other.insert(k.to_string(), v);
            }
            println!("{}", jwt.mint(&claims).map_err(anyhow::Error::msg)?);
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
