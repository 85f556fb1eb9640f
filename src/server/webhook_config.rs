//! Renders the MutatingWebhookConfigurations of `webhooks/` with the
//! caBundle (and, for local use, the URL) filled in, and calico-node's
//! users in the node-status webhook's `matchConditions`: no hand editing.

use base64::Engine as _;

use crate::server::{MUTATE_PATH, NODE_STATUS_PATH};

/// The line of the node-status webhook's `matchConditions` that names the
/// users; the template holds calico-node's default user.
const USERS_LINE: &str = "expression: \"request.userInfo.username in [";

/// A user name for `--calico-node-user`: put into a CEL string literal
/// inside a YAML double-quoted string, so the characters that would need
/// escaping in either (quotes, backslashes, control characters) are refused
/// rather than escaped. Kubernetes user names of ServiceAccounts never have them.
pub fn parse_user(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("a user name cannot be empty".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| matches!(c, '\'' | '"' | '\\') || c.is_control())
    {
        return Err(format!(
            "{s:?}: the character {c:?} is not allowed in a user name here"
        ));
    }
    Ok(s.to_string())
}

/// The CEL expression that matches exactly `users`.
pub fn users_expression(users: &[String]) -> String {
    let list: Vec<String> = users.iter().map(|u| format!("'{u}'")).collect();
    format!("request.userInfo.username in [{}]", list.join(", "))
}

/// The node-status URL next to the Calico objects' `url`: its last path
/// segment replaced (`https://h:9443/mutate` -> `https://h:9443/mutate-node-status`).
pub fn node_status_url(url: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !url.contains(['?', '#']),
        "{url:?}: a webhook URL has no query or fragment"
    );
    let after_scheme = url
        .find("://")
        .map(|i| i + 3)
        .ok_or_else(|| anyhow::anyhow!("{url:?} is not a URL"))?;
    let path_start = url[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .ok_or_else(|| anyhow::anyhow!("{url:?} has no path (e.g. {MUTATE_PATH})"))?;
    let last = url.rfind('/').expect("a path has a slash");
    debug_assert!(last >= path_start);
    Ok(format!("{}{NODE_STATUS_PATH}", &url[..last]))
}

pub const SERVICE_TEMPLATE: &str =
    include_str!("../../webhooks/service/mutatingwebhookconfiguration.yaml");
pub const URL_TEMPLATE: &str = include_str!("../../webhooks/url/mutatingwebhookconfiguration.yaml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// In-cluster: the webhook is reached through its Service.
    Service,
    /// Local: the API server calls a URL (e.g. https://127.0.0.1:9443/mutate).
    Url,
}

/// Fills `caBundle` (base64 of `ca_pem`) in every webhook, with
/// `Mode::Url` replaces every `url:` by `url` (the node-status webhook's by
/// [`node_status_url`] of it), and names `users` in the node-status
/// webhook's `matchConditions`.
pub fn render(
    mode: Mode,
    ca_pem: &str,
    url: Option<&str>,
    users: &[String],
) -> anyhow::Result<String> {
    anyhow::ensure!(
        ca_pem.contains("-----BEGIN CERTIFICATE-----"),
        "the CA file is not a PEM certificate"
    );
    anyhow::ensure!(!users.is_empty(), "at least one calico-node user is needed");
    for u in users {
        parse_user(u).map_err(anyhow::Error::msg)?;
    }
    let node_url = url.map(node_status_url).transpose()?;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let template = match mode {
        Mode::Service => SERVICE_TEMPLATE,
        Mode::Url => URL_TEMPLATE,
    };
    let mut out = String::with_capacity(template.len() + 4 * bundle.len());
    let (mut bundles, mut urls, mut user_lines) = (0, 0, 0);
    for line in template.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("caBundle:") {
            out.push_str(&format!("{indent}caBundle: {bundle}\n"));
            bundles += 1;
        } else if let (Mode::Url, Some(url), Some(node_url), true) =
            (mode, url, &node_url, trimmed.starts_with("url:"))
        {
            let to = if trimmed.trim_end().ends_with(NODE_STATUS_PATH) {
                node_url.as_str()
            } else {
                url
            };
            out.push_str(&format!("{indent}url: {to}\n"));
            urls += 1;
        } else if trimmed.starts_with(USERS_LINE) {
            out.push_str(&format!(
                "{indent}expression: \"{}\"\n",
                users_expression(users)
            ));
            user_lines += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    anyhow::ensure!(bundles > 0, "the template has no caBundle line");
    anyhow::ensure!(
        user_lines == 1,
        "the template has {user_lines} calico-node user lines, not 1"
    );
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

    fn default_users() -> Vec<String> {
        vec![crate::server::node_status::DEFAULT_CALICO_NODE_USER.to_string()]
    }

    fn hooks(yaml: &str) -> Vec<serde_json::Value> {
        let docs: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        docs["webhooks"].as_array().unwrap().clone()
    }

    fn is_node_status(h: &serde_json::Value) -> bool {
        h["name"] == "node-status.overlay-switch.gardener.cloud"
    }

    #[test]
    fn every_webhook_gets_the_bundle_and_the_url() {
        let ca = crate::server::certs::generate(&["x".into()], &[], 1).unwrap();
        let out = render(
            Mode::Url,
            &ca.ca_cert_pem,
            Some("https://127.0.0.1:1234/mutate"),
            &default_users(),
        )
        .unwrap();
        let rendered = hooks(&out);
        assert_eq!(rendered.len(), 6);
        for h in &rendered {
            assert_eq!(
                h["clientConfig"]["caBundle"].as_str().unwrap(),
                ca.ca_bundle()
            );
            let want = if is_node_status(h) {
                "https://127.0.0.1:1234/mutate-node-status"
            } else {
                "https://127.0.0.1:1234/mutate"
            };
            assert_eq!(h["clientConfig"]["url"].as_str().unwrap(), want);
        }
        let svc = render(Mode::Service, &ca.ca_cert_pem, None, &default_users()).unwrap();
        for h in hooks(&svc) {
            let want = if is_node_status(&h) {
                NODE_STATUS_PATH
            } else {
                MUTATE_PATH
            };
            assert_eq!(h["clientConfig"]["service"]["path"].as_str().unwrap(), want);
            assert_eq!(
                h["clientConfig"]["caBundle"].as_str().unwrap(),
                ca.ca_bundle()
            );
        }
    }

    #[test]
    fn only_the_node_status_webhook_fails_open_and_only_for_calico_nodes_users() {
        let ca = crate::server::certs::generate(&["x".into()], &[], 1).unwrap();
        let users = vec![
            "system:serviceaccount:kube-system:calico-node".to_string(),
            "system:serviceaccount:kube-system:calico-kube-controllers".to_string(),
        ];
        for mode in [Mode::Service, Mode::Url] {
            let out = render(mode, &ca.ca_cert_pem, None, &users).unwrap();
            for h in hooks(&out) {
                if is_node_status(&h) {
                    assert_eq!(h["failurePolicy"], "Ignore");
                    assert_eq!(h["timeoutSeconds"].as_u64(), Some(1));
                    assert_eq!(h["rules"][0]["resources"][0], "nodes/status");
                    assert_eq!(h["rules"][0]["operations"][0], "UPDATE");
                    assert_eq!(
                        h["matchConditions"][0]["expression"].as_str().unwrap(),
                        "request.userInfo.username in ['system:serviceaccount:kube-system:calico-node', 'system:serviceaccount:kube-system:calico-kube-controllers']"
                    );
                } else {
                    assert_eq!(h["failurePolicy"], "Fail", "{:?}", h["name"]);
                }
            }
        }
        // The template itself holds the default user.
        let out = render(Mode::Service, &ca.ca_cert_pem, None, &default_users()).unwrap();
        assert_eq!(
            out.matches(
                "request.userInfo.username in ['system:serviceaccount:kube-system:calico-node']"
            )
            .count(),
            1
        );
    }

    #[test]
    fn user_names_that_would_need_escaping_are_refused() {
        for (name, ok) in [
            ("system:serviceaccount:kube-system:calico-node", true),
            ("alice@example.com", true),
            ("", false),
            ("a'b", false),
            ("a\"b", false),
            ("a\\b", false),
            ("a\nb", false),
        ] {
            assert_eq!(parse_user(name).is_ok(), ok, "{name:?}");
        }
        let ca = crate::server::certs::generate(&["x".into()], &[], 1).unwrap();
        assert!(
            render(
                Mode::Service,
                &ca.ca_cert_pem,
                None,
                &["x']||true||['".into()]
            )
            .is_err()
        );
        assert!(render(Mode::Service, &ca.ca_cert_pem, None, &[]).is_err());
    }

    #[test]
    fn the_node_status_url_replaces_the_last_path_segment() {
        for (url, want) in [
            (
                "https://127.0.0.1:9443/mutate",
                Some("https://127.0.0.1:9443/mutate-node-status"),
            ),
            (
                "https://h.example/osw/mutate",
                Some("https://h.example/osw/mutate-node-status"),
            ),
            (
                "https://h.example/",
                Some("https://h.example/mutate-node-status"),
            ),
            ("https://h.example", None),
            ("https://h.example/mutate?x=1", None),
            ("127.0.0.1:9443/mutate", None),
        ] {
            assert_eq!(node_status_url(url).ok().as_deref(), want, "{url}");
        }
    }

    #[test]
    fn refuses_a_ca_that_is_not_pem() {
        assert!(render(Mode::Service, "nope", None, &default_users()).is_err());
    }
}
