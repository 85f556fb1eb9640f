//! Renders the MutatingWebhookConfigurations of `webhooks/` with the
//! caBundle (and, for local use, the URL) filled in: no hand editing.

use base64::Engine as _;

pub const SERVICE_TEMPLATE: &str =
    include_str!("../webhooks/service/mutatingwebhookconfiguration.yaml");
pub const URL_TEMPLATE: &str = include_str!("../webhooks/url/mutatingwebhookconfiguration.yaml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// In-cluster: the webhook is reached through its Service.
    Service,
    /// Local: the API server calls a URL (e.g. https://127.0.0.1:9443/mutate).
    Url,
}

/// Fills `caBundle` (base64 of `ca_pem`) in every webhook, and with
/// `Mode::Url` replaces every `url:` by `url`.
pub fn render(mode: Mode, ca_pem: &str, url: Option<&str>) -> anyhow::Result<String> {
    anyhow::ensure!(
        ca_pem.contains("-----BEGIN CERTIFICATE-----"),
        "the CA file is not a PEM certificate"
    );
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let template = match mode {
        Mode::Service => SERVICE_TEMPLATE,
        Mode::Url => URL_TEMPLATE,
    };
    let mut out = String::with_capacity(template.len() + 4 * bundle.len());
    let (mut bundles, mut urls) = (0, 0);
    for line in template.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("caBundle:") {
            out.push_str(&format!("{indent}caBundle: {bundle}\n"));
            bundles += 1;
        } else if mode == Mode::Url && trimmed.starts_with("url:") && url.is_some() {
            out.push_str(&format!("{indent}url: {}\n", url.unwrap_or_default()));
            urls += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    anyhow::ensure!(bundles > 0, "the template has no caBundle line");
    if mode == Mode::Url && url.is_some() {
        anyhow::ensure!(
            urls == bundles,
            "the template has {urls} url lines for {bundles} webhooks"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_webhook_gets_the_bundle_and_the_url() {
        let ca = crate::certs::generate(&["x".into()], &[], 1).unwrap();
        let out = render(
            Mode::Url,
            &ca.ca_cert_pem,
            Some("https://127.0.0.1:1234/mutate"),
        )
        .unwrap();
        let docs: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        let hooks = docs["webhooks"].as_sequence().unwrap();
        assert_eq!(hooks.len(), 3);
        for h in hooks {
            assert_eq!(
                h["clientConfig"]["caBundle"].as_str().unwrap(),
                ca.ca_bundle()
            );
            assert_eq!(
                h["clientConfig"]["url"].as_str().unwrap(),
                "https://127.0.0.1:1234/mutate"
            );
        }
        let svc = render(Mode::Service, &ca.ca_cert_pem, None).unwrap();
        let docs: serde_yaml::Value = serde_yaml::from_str(&svc).unwrap();
        for h in docs["webhooks"].as_sequence().unwrap() {
            assert_eq!(
                h["clientConfig"]["service"]["path"].as_str().unwrap(),
                "/mutate"
            );
            assert_eq!(
                h["clientConfig"]["caBundle"].as_str().unwrap(),
                ca.ca_bundle()
            );
        }
    }

    #[test]
    fn refuses_a_ca_that_is_not_pem() {
        assert!(render(Mode::Service, "nope", None).is_err());
    }
}
