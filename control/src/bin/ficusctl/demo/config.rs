//! The demo's config: `config/examples/demo/shop.yaml.tmpl` (compiled in) with the sidecars'
//! addresses and the split's weights filled in.

use std::net::SocketAddr;

/// The template, from `config/examples/demo/`.
const TEMPLATE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../config/examples/demo/shop.yaml.tmpl"
));

/// Where the template's name in the `sources` of an apply points.
pub const TEMPLATE_NAME: &str = "config/examples/demo/shop.yaml.tmpl";

/// The inbound listeners of the workloads' sidecars.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    /// The monolith's sidecar.
    pub monolith: SocketAddr,
    /// The two payments-v2 instances' sidecars.
    pub payments_v2: [SocketAddr; 2],
    /// The reports service's sidecar.
    pub reports: SocketAddr,
}

/// The config with `v2_percent` % of `/api/payments` on payments-v2.
pub fn render(endpoints: &Endpoints, v2_percent: u32) -> String {
    let v2_percent = v2_percent.min(100);
    TEMPLATE
        .replace("@MONOLITH@", &endpoints.monolith.to_string())
        .replace("@PAYMENTS_V2_1@", &endpoints.payments_v2[0].to_string())
        .replace("@PAYMENTS_V2_2@", &endpoints.payments_v2[1].to_string())
        .replace("@REPORTS@", &endpoints.reports.to_string())
        .replace("@MONOLITH_WEIGHT@", &(100 - v2_percent).to_string())
        .replace("@PAYMENTS_V2_WEIGHT@", &v2_percent.to_string())
}

/// payments-v2's share of `/api/payments` in a config as the API returns it (JSON documents),
/// in percent; `None` when the route is not there.
pub fn v2_percent(documents: &[serde_json::Value]) -> Option<u32> {
    let route = documents
        .iter()
        .find(|d| d["kind"] == "HTTPRoute" && d["metadata"]["name"] == "shop")?;
    let refs = route["spec"]["rules"][0]["backendRefs"].as_array()?;
    let weight = |name: &str| {
        refs.iter()
            .find(|r| r["name"] == name)
            .map_or(0, |r| r["weight"].as_u64().unwrap_or(1))
    };
    let (monolith, v2) = (weight("monolith"), weight("payments-v2"));
    let total = monolith + v2;
    (total > 0).then(|| u32::try_from(v2 * 100 / total).unwrap_or(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Endpoints {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        Endpoints {
            monolith: addr(41001),
            payments_v2: [addr(41002), addr(41003)],
            reports: addr(41004),
        }
    }

    #[test]
    fn every_step_renders_a_valid_config() {
        for percent in [0, 10, 50, 100] {
            let text = render(&endpoints(), percent);
            let left = text
                .lines()
                .filter(|line| !line.trim_start().starts_with('#'))
                .find(|line| line.contains('@'));
            assert_eq!(left, None, "a placeholder is left");
            let config = ficus_config::parse_str("demo.yaml", &text)
                .unwrap_or_else(|errors| panic!("{percent}%: {errors}"));
            assert_eq!(v2_percent(&config.document_values()), Some(percent));
        }
    }
}
