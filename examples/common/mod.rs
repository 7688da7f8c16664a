//! What the benchmarks that drive the core directly (no HTTP) share: a core on a store, and
//! an organisation with its admin to work as.

use std::sync::Arc;

use souq::bus::Bus;
use souq::domain::{Core, Limits, NewOrganisation, Principal};
use souq::hub::Hub;
use souq::store::Store;

/// A core on `store`, alone (no Redis), keeping files in a temporary folder named `name`.
pub fn core(store: Store, name: &str) -> Result<Arc<Core>, String> {
    let files = souq::domain::Files::new(
        souq::objects::Objects::open(&souq::objects::Place::Folder(
            std::env::temp_dir().join(format!("{name}-files")),
        ))
        .map_err(|e| e.to_string())?,
        souq::domain::FileLimits::default(),
    );
    Ok(Arc::new(
        Core::new(
            store,
            Limits::default(),
            Arc::new(Bus::new(Arc::new(Hub::new()))),
            souq::Clock::system(),
            Arc::default(),
            files,
        )
        .map_err(|e| e.to_string())?,
    ))
}

/// A new organisation (named after this process) and its admin: (org id, admin, tag).
pub async fn organisation(core: &Core) -> Result<(i64, Principal, String), String> {
    let e = |e: souq::domain::Error| e.to_string();
    let tag = format!("{:x}", std::process::id());
    let org_id = core
        .create_organisation(NewOrganisation {
            email: format!("bench-{tag}@acme.test"),
            password: "correct horse".into(),
            subdomain: format!("bench-{tag}"),
            addons: vec!["live_chat".into()],
        })
        .await
        .map_err(e)?;
    let tokens = core
        .sign_in(
            &format!("bench-{tag}@acme.test"),
            "correct horse",
            &format!("bench-{tag}"),
            "live_chat",
            std::net::Ipv4Addr::LOCALHOST.into(),
        )
        .await
        .map_err(e)?;
    let admin = core.authenticate(&tokens.access_token).await.map_err(e)?;
    Ok((org_id, admin, tag))
}
