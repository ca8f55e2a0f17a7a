//! The `pbxbridge` binary: loads `.env`, parses the command line, sets up logging and runs
//! the subcommand (see `pbxbridge::cli`).

use clap::Parser;

#[tokio::main]
async fn main() {
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: .env could not be read: {e}");
        std::process::exit(2);
    }
    let cli = pbxbridge::cli::Cli::parse();
    if let Err(e) = cli.settings.validate() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    pbxbridge::logging::init(cli.settings.core.log_format);
    match pbxbridge::cli::run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
