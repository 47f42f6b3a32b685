//! Kubernetes resource quantities, checked against the API server's own grammar so that a
//! request fjord accepts is never refused by the cluster later (faas-netes passes the strings
//! through and only logs the API server's refusal on update).
//!
//! ```text
//! quantity ::= number suffix          number ::= [+-] (digits | digits.digits | digits. | .digits)
//! suffix   ::= Ki|Mi|Gi|Ti|Pi|Ei | n|u|m|""|k|M|G|T|P|E | (e|E) [+-] digits
//! ```
//!
//! fjord-core's parser is more forgiving (surrounding spaces, for example) because the process
//! runtime reads the value itself; here the string goes to the API server as it is.

/// Parses a non-negative quantity into its value in base units (bytes, cores, devices), for
/// comparing a request with its limit. The string itself is what goes into the object.
pub fn parse(value: &str) -> Result<f64, &'static str> {
    if value.is_empty() {
        return Err("it is empty");
    }
    let b = value.as_bytes();
    let mut i = 0;
    let negative = match b[0] {
        b'-' => {
            i = 1;
            true
        }
        b'+' => {
            i = 1;
            false
        }
        _ => false,
    };
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - frac_start;
    }
    if int_digits + frac_digits == 0 {
        return Err("expected a number such as 128Mi, 1G, 500m or 0.5");
    }
    let number: f64 = value[..i]
        .parse()
        .map_err(|_| "expected a number such as 128Mi, 1G, 500m or 0.5")?;
    let multiplier = match &value[i..] {
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        suffix => {
            let exponent = suffix
                .strip_prefix(['e', 'E'])
                .filter(|e| {
                    let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                    !digits.is_empty() && digits.bytes().all(|d| d.is_ascii_digit())
                })
                .ok_or("unknown suffix: use Ki, Mi, Gi, Ti, Pi, Ei, m, k, M, G, T, P, E or an exponent such as e6")?;
            let exponent: i32 = exponent.parse().map_err(|_| "exponent out of range")?;
            10f64.powi(exponent)
        }
    };
    if negative && number != 0.0 {
        return Err("resources cannot be negative");
    }
    let base = number * multiplier;
    if !base.is_finite() {
        return Err("number out of range");
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_api_servers_forms() {
        for (q, want) in [
            ("128Mi", 128.0 * 1024.0 * 1024.0),
            ("128M", 128e6),
            ("100m", 0.1),
            ("0.5", 0.5),
            (".5", 0.5),
            ("2.", 2.0),
            ("1e3", 1000.0),
            ("1E-3", 0.001),
            ("+1k", 1000.0),
            ("0", 0.0),
            ("-0", 0.0),
            ("1E", 1e18),
            ("3n", 3e-9),
        ] {
            let got = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
            assert!((got - want).abs() <= want * 1e-12, "{q}: {got} != {want}");
        }
    }

    #[test]
    fn refuses_what_the_api_server_refuses() {
        for q in [
            "", " 1Mi", "1Mi ", "1 Mi", "Mi", "1MB", "1mi", "1.2.3", "-1", "-1Mi", "1e", "1e+",
            "1e1.5", ".", "+", "1KiB", "lots",
        ] {
            assert!(parse(q).is_err(), "{q:?} was accepted");
        }
    }
}
