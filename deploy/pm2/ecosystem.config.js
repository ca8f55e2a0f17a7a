// pm2 process file for pbxbridge.
//
//   pm2 start deploy/pm2/ecosystem.config.js     # from /opt/pbxbridge (or set PBXBRIDGE_HOME)
//   pm2 logs pbxbridge
//   pm2 save && pm2 startup                      # start again at boot
//
// pbxbridge reads its settings from the environment and from `.env` in its working
// directory (PBXBRIDGE_HOME, default /opt/pbxbridge): keep DATABASE_URL, ARI_PASSWORD,
// API_TOKENS, ... there (chmod 600), never in this file.
const home = process.env.PBXBRIDGE_HOME || '/opt/pbxbridge';

module.exports = {
  apps: [
    {
      name: 'pbxbridge',
      // The release binary (`cargo build --release`, copied to /usr/local/bin).
      script: process.env.PBXBRIDGE_BIN || '/usr/local/bin/pbxbridge',
      args: 'serve',
      // A native binary: pm2 must not run it through Node.
      interpreter: 'none',
      exec_mode: 'fork',
      instances: 1,
      cwd: home,
      env: {
        // Plain text lines, good under `pm2 logs`; set LOG_FORMAT=json in .env for shippers.
        RUST_LOG: 'info',
      },
      autorestart: true,
      // Restart with backoff: 100 ms, doubling up to 15 s, reset once it stays up.
      exp_backoff_restart_delay: 100,
      min_uptime: '10s',
      // SIGTERM, then this long (ms) for the writer to commit what is queued before SIGKILL.
      kill_timeout: 30000,
      // One dated stream for stdout and stderr (pbxbridge logs to stderr).
      log_date_format: 'YYYY-MM-DD HH:mm:ss.SSS Z',
      merge_logs: true,
      time: false,
    },
  ],
};
