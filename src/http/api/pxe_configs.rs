//! `/api/bmm/pxe_config/…`: MozPool 4.x's PXE config reads, kept so the original web UI
//! (`bmm.html`) and old scripts still get answers.
//!
//! mozpool boots nothing over PXE: an image's fastboot recipe plays the part a PXE config
//! played. So there is one PXE config per image, of the same name, active unless the image
//! is hidden, and its `contents` describe the image's recipe and boot config keys.

use hyper::Response;
use serde_json::json;

use crate::domain::model::{FlashStep, Image};
use crate::domain::names::ImageName;
use crate::http::body::{Body, ok};
use crate::http::dispatch::Ctx;
use crate::http::error::ApiError;

/// `GET /api/bmm/pxe_config/list/[?active_only=1]`: `{"pxe_configs": [names, sorted]}`.
pub async fn list(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let active_only = ctx.query.flag("active_only");
    let images = ctx.svc.store.read(|snap| snap.images()).await?;
    let mut names: Vec<&str> = images
        .iter()
        .filter(|i| !active_only || !i.hidden)
        .map(|i| i.name.as_str())
        .collect();
    names.sort_unstable();
    Ok(ok(&json!({ "pxe_configs": names })))
}

/// `GET /api/bmm/pxe_config/{name}/details/`: `{"details": {"name", "description",
/// "contents", "active"}}`. An unknown name is a 404 (the original answered 500).
pub async fn details(ctx: &Ctx, name: ImageName) -> Result<Response<Body>, ApiError> {
    let images = ctx.svc.store.read(|snap| snap.images()).await?;
    let image = images
        .iter()
        .find(|i| i.name == name.as_str())
        .ok_or_else(|| ApiError::not_found(format!("no pxe_config named {name}")))?;
    Ok(ok(&json!({
        "details": {
            "name": image.name,
            // The original's column was `text not null`.
            "description": image.description.as_deref().unwrap_or(""),
            "contents": contents(image),
            "active": !image.hidden,
        }
    })))
}

/// The text standing in for a PXE template: what flashing the image does, as the fastboot
/// commands it runs, after comment lines naming the boot config keys and the agent.
fn contents(image: &Image) -> String {
    let mut out = format!(
        "# mozpool image {}: flashed with fastboot, not booted over PXE\n",
        image.name
    );
    out.push_str(&format!(
        "# boot config keys: {}\n",
        if image.boot_config_keys.is_empty() {
            "(none)".to_owned()
        } else {
            image.boot_config_keys.join(", ")
        }
    ));
    out.push_str(&format!("# agent: {}\n", image.agent.as_str()));
    if image.steps.is_empty() {
        out.push_str("# no flash steps\n");
    }
    for step in &image.steps {
        out.push_str(&command(step));
        out.push('\n');
    }
    out
}

/// The fastboot command line one recipe step runs.
fn command(step: &FlashStep) -> String {
    match step {
        FlashStep::Flash { partition, file } => format!("fastboot flash {partition} {file}"),
        FlashStep::Erase { partition } => format!("fastboot erase {partition}"),
        FlashStep::Format { partition } => format!("fastboot format {partition}"),
        FlashStep::Wipe => "fastboot -w".to_owned(),
        FlashStep::SetActive { slot } => format!("fastboot set_active {slot}"),
        FlashStep::RebootFastboot => "fastboot reboot fastboot".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::Agent;

    #[test]
    fn contents_lists_the_recipe_as_fastboot_commands() {
        let image = Image {
            name: "b2g".into(),
            description: None,
            boot_config_keys: vec!["b2gbase".into()],
            can_reuse: false,
            hidden: false,
            agent: Agent::Sut,
            steps: vec![
                FlashStep::Flash {
                    partition: "boot".into(),
                    file: "boot.img".into(),
                },
                FlashStep::Wipe,
            ],
        };
        assert_eq!(
            contents(&image),
            "# mozpool image b2g: flashed with fastboot, not booted over PXE\n\
             # boot config keys: b2gbase\n\
             # agent: sut\n\
             fastboot flash boot boot.img\n\
             fastboot -w\n"
        );
    }
}
