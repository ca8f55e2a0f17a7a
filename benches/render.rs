//! Benchmark: render and atomically write the PJSIP include file for 10,000 extensions
//! (target ≤ 50 ms). A plain `main` (harness = false): `cargo bench --bench render`.

use std::time::{Duration, Instant};

use chrono::Utc;
use pbxbridge::config::Secret;
use pbxbridge::extensions::model::{Extension, Provisioning};
use pbxbridge::extensions::password::password_digest;
use pbxbridge::extensions::render;

fn main() {
    let n = 10_000;
    let now = Utc::now();
    let rows: Vec<Extension> = (0..n)
        .map(|i| {
            let ext = format!("{}", 100_000 + i);
            Extension {
                id: uuid::Uuid::new_v4().to_string(),
                password_digest: password_digest(
                    &ext,
                    "asterisk",
                    &Secret::new(format!("pw-{i}-secret")),
                ),
                display_name: format!("Agent Number {i}"),
                extension: ext,
                context: "from-internal".into(),
                transport: "transport-udp".into(),
                codecs: vec!["ulaw".into(), "alaw".into(), "g729".into()],
                max_contacts: 1,
                enabled: true,
                realm: "asterisk".into(),
                revision: 1,
                provisioning: Provisioning::pending(),
                created_at: now,
                updated_at: now,
            }
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("pjsip_extensions.conf");
    let runs = 20;
    let (mut render_t, mut write_t, mut total_t) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    for i in 0..runs {
        // Change one row each run so that every write really writes.
        let mut rows = rows.clone();
        rows[0].display_name = format!("Changed {i}");
        let t0 = Instant::now();
        let text = render::render(&rows);
        let t1 = Instant::now();
        let written = render::write_atomic(&path, text.as_bytes(), None).expect("write");
        let t2 = Instant::now();
        assert!(written);
        bytes = text.len();
        render_t.push(t1 - t0);
        write_t.push(t2 - t1);
        total_t.push(t2 - t0);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (r, w, t) = (
        median(&mut render_t),
        median(&mut write_t),
        median(&mut total_t),
    );
    let worst = *total_t.iter().max().expect("runs");
    println!(
        "render+write {n} extensions ({} KiB): median {:.1} ms (render {:.1} ms, write+fsync {:.1} ms), worst {:.1} ms over {runs} runs; target <= 50 ms: {}",
        bytes / 1024,
        t.as_secs_f64() * 1e3,
        r.as_secs_f64() * 1e3,
        w.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3,
        if t <= Duration::from_millis(50) {
            "met"
        } else {
            "NOT met"
        }
    );
}
