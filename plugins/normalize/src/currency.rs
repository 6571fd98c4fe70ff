//! Derived amounts in one currency: `properties.revenue_usd` from `properties.revenue` and
//! `properties.currency`, with rates from the config.
//!
//! Rates are fixed per plugin version: a plugin has no network, and a conversion that changed
//! with the day would make replays disagree with the first run. Update them by deploying a new
//! config.

use std::collections::HashMap;

use serde::Deserialize;
use weir_plugin::serde_json::{Number, Value};
use weir_plugin::{Event, InitError};

/// `currency` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrencyConfig {
    /// Currency code → how many units of the target currency one unit of it is worth, e.g.
    /// `{"USD": 1.0, "EUR": 1.08}` to convert into US dollars. Codes are case-insensitive.
    pub rates: HashMap<String, f64>,
    /// Property holding an amount → property that receives the converted amount, e.g.
    /// `{"revenue": "revenue_usd"}`. Both are names (or dotted paths) below `properties`.
    pub fields: HashMap<String, String>,
    /// Currency assumed when `properties.currency` is missing.
    #[serde(default)]
    pub default_currency: Option<String>,
    /// Decimal places the converted amount is rounded to.
    #[serde(default = "default_decimals")]
    pub decimals: u8,
    /// What happens to an event whose amount cannot be converted (unknown or missing currency,
    /// an amount that is not a number).
    #[serde(default)]
    pub unconvertible: Unconvertible,
}

fn default_decimals() -> u8 {
    2
}

/// What happens to an event whose amount cannot be converted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unconvertible {
    /// Keep the event without the derived property; count it in the
    /// `normalize_unconverted` metric.
    #[default]
    Skip,
    /// Send the event to the dead-letter queue.
    Fail,
}

#[derive(Debug)]
pub(crate) struct Converter {
    /// Upper-case code → rate.
    rates: HashMap<String, f64>,
    /// `(properties.<amount>, properties.<derived>)`, sorted for a stable output key order.
    fields: Vec<(String, String)>,
    default_currency: Option<String>,
    scale: f64,
    unconvertible: Unconvertible,
}

impl Converter {
    pub(crate) fn new(config: CurrencyConfig) -> Result<Self, InitError> {
        if config.fields.is_empty() {
            return Err("`currency.fields` must map at least one amount property".into());
        }
        if config.decimals > 12 {
            return Err("`currency.decimals` must be at most 12".into());
        }
        let mut rates = HashMap::new();
        for (code, rate) in config.rates {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(format!("`currency.rates.{code}` must be a positive number").into());
            }
            rates.insert(code.to_uppercase(), rate);
        }
        let default_currency = config.default_currency.map(|c| c.to_uppercase());
        if let Some(code) = &default_currency
            && !rates.contains_key(code)
        {
            return Err(format!("`currency.default_currency` {code} has no rate").into());
        }
        let mut fields: Vec<(String, String)> = config
            .fields
            .into_iter()
            .map(|(from, to)| (format!("properties.{from}"), format!("properties.{to}")))
            .collect();
        fields.sort();
        Ok(Converter {
            rates,
            fields,
            default_currency,
            scale: 10f64.powi(i32::from(config.decimals)),
            unconvertible: config.unconvertible,
        })
    }

    /// Adds the derived amounts to `event`; `Err` only with `unconvertible = "fail"`.
    pub(crate) fn apply(&self, event: &mut Event) -> Result<(), String> {
        let mut rate = None;
        for (from, to) in &self.fields {
            let Some(amount) = event.get(from) else {
                continue;
            };
            let Some(amount) = as_amount(amount) else {
                self.unconvertible(&format!("`{from}` is not a number"), "not_a_number")?;
                continue;
            };
            let rate = match rate {
                Some(rate) => rate,
                None => match self.rate_for(event) {
                    Ok(found) => *rate.insert(found),
                    Err((reason, label)) => {
                        // One reason per event is enough, whatever the number of fields.
                        return self.unconvertible(&reason, label);
                    }
                },
            };
            let converted = (amount * rate * self.scale).round() / self.scale;
            if let Some(number) = Number::from_f64(converted) {
                event
                    .set(to, Value::Number(number))
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn rate_for(&self, event: &Event) -> Result<f64, (String, &'static str)> {
        let code = match event.get("properties.currency") {
            Some(Value::String(code)) => code.to_uppercase(),
            None | Some(Value::Null) => match &self.default_currency {
                Some(code) => code.clone(),
                None => {
                    return Err((
                        "`properties.currency` is missing and no default_currency is configured"
                            .to_owned(),
                        "missing_currency",
                    ));
                }
            },
            Some(_) => {
                return Err((
                    "`properties.currency` is not a string".to_owned(),
                    "unknown_currency",
                ));
            }
        };
        self.rates
            .get(&code)
            .copied()
            .ok_or_else(|| (format!("no rate for currency {code}"), "unknown_currency"))
    }

    fn unconvertible(&self, reason: &str, label: &str) -> Result<(), String> {
        match self.unconvertible {
            Unconvertible::Skip => {
                weir_plugin::count("normalize_unconverted", &[("reason", label)], 1);
                Ok(())
            }
            Unconvertible::Fail => Err(format!("cannot convert amount: {reason}")),
        }
    }
}

/// A number, or a string holding one (`"19.99"`), as some SDKs send amounts.
fn as_amount(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::{self, json};

    fn converter(config: Value) -> Converter {
        Converter::new(serde_json::from_value(config).unwrap()).unwrap()
    }

    fn convert(c: &Converter, properties: Value) -> Result<Value, String> {
        let mut event =
            Event::from_value(json!({"type": "track", "properties": properties})).unwrap();
        c.apply(&mut event)?;
        Ok(event.get("properties").cloned().unwrap_or_default())
    }

    #[test]
    fn converts_every_configured_field_with_rounding() {
        let c = converter(json!({
            "rates": {"usd": 1.0, "EUR": 1.08},
            "fields": {"revenue": "revenue_usd", "tax": "tax_usd"}
        }));
        let out = convert(
            &c,
            json!({"revenue": 19.99, "tax": "3.5", "currency": "eur"}),
        )
        .unwrap();
        assert_eq!(out["revenue_usd"], json!(21.59));
        assert_eq!(out["tax_usd"], json!(3.78));
    }

    #[test]
    fn unconvertible_amounts_are_skipped_or_failed() {
        let config = json!({"rates": {"USD": 1.0}, "fields": {"revenue": "revenue_usd"}});
        let skip = converter(config.clone());
        let out = convert(&skip, json!({"revenue": 5, "currency": "JPY"})).unwrap();
        assert_eq!(out, json!({"revenue": 5, "currency": "JPY"}));
        assert_eq!(
            convert(&skip, json!({"revenue": 5})).unwrap(),
            json!({"revenue": 5})
        );

        let mut config = config;
        config["unconvertible"] = json!("fail");
        let fail = converter(config);
        let err = convert(&fail, json!({"revenue": 5, "currency": "JPY"})).unwrap_err();
        assert_eq!(err, "cannot convert amount: no rate for currency JPY");
        let err = convert(&fail, json!({"revenue": "lots", "currency": "USD"})).unwrap_err();
        assert!(
            err.contains("`properties.revenue` is not a number"),
            "{err}"
        );
        // No amount, nothing to convert: not an error.
        assert_eq!(
            convert(&fail, json!({"currency": "JPY"})).unwrap(),
            json!({"currency": "JPY"})
        );
    }

    #[test]
    fn default_currency_applies_when_none_is_given() {
        let c = converter(json!({
            "rates": {"USD": 1.0, "GBP": 1.25},
            "fields": {"revenue": "revenue_usd"},
            "default_currency": "gbp",
            "decimals": 0
        }));
        let out = convert(&c, json!({"revenue": 10})).unwrap();
        assert_eq!(out["revenue_usd"], json!(13.0));
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = |config: Value| {
            Converter::new(serde_json::from_value(config).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(bad(json!({"rates": {"USD": 0.0}, "fields": {"a": "b"}})).contains("positive"));
        assert!(bad(json!({"rates": {"USD": 1.0}, "fields": {}})).contains("at least one"));
        assert!(
            bad(json!({"rates": {"USD": 1.0}, "fields": {"a": "b"}, "default_currency": "EUR"}))
                .contains("EUR has no rate")
        );
    }
}
