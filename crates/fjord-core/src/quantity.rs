//! Kubernetes-style resource quantities as used in `limits`/`requests`: memory in bytes
//! (`128Mi`, `1G`, `1e6`), CPU in millicores (`500m`, `0.5`, `2`).

/// Why a quantity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid quantity: {reason}")]
pub struct QuantityError {
    pub value: String,
    pub reason: &'static str,
}

fn err(value: &str, reason: &'static str) -> QuantityError {
    QuantityError {
        value: value.chars().take(64).collect(),
        reason,
    }
}

/// Splits `123.5Mi` into the decimal number and its suffix.
fn split(value: &str) -> Result<(f64, &str), QuantityError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(err(value, "it is empty"));
    }
    let end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(v.len());
    let (num, mut suffix) = v.split_at(end);
    let mut number: f64 = num
        .parse()
        .map_err(|_| err(value, "expected a number such as 128Mi, 1G, 500m or 0.5"))?;
    // Decimal exponent form: 1e3, 12E6.
    if let Some(exp) = suffix.strip_prefix(['e', 'E'])
        && !exp.is_empty()
        && exp.bytes().all(|b| b.is_ascii_digit())
    {
        let e: i32 = exp.parse().map_err(|_| err(value, "exponent too large"))?;
        if e > 18 {
            return Err(err(value, "exponent too large"));
        }
        number *= 10f64.powi(e);
        suffix = "";
    }
    if !number.is_finite() {
        return Err(err(value, "number out of range"));
    }
    Ok((number, suffix))
}

/// Parses a memory quantity into bytes. Fractions of a byte round up.
pub fn parse_memory(value: &str) -> Result<u64, QuantityError> {
    let (number, suffix) = split(value)?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        _ => {
            return Err(err(
                value,
                "unknown suffix: use one of Ki, Mi, Gi, Ti, k, M, G, T (e.g. 128Mi)",
            ));
        }
    };
    let bytes = (number * mult).ceil();
    if bytes >= u64::MAX as f64 {
        return Err(err(value, "number out of range"));
    }
    if bytes < 1.0 {
        return Err(err(value, "memory must be at least one byte"));
    }
    Ok(bytes as u64)
}

/// Formats bytes as the largest exact binary unit (`268435456` → `256Mi`), else bytes.
pub fn format_memory(bytes: u64) -> String {
    for (unit, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        if bytes > 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Parses a CPU quantity into millicores (`1` = 1000, `250m` = 250). Must be at least 1m.
pub fn parse_cpu(value: &str) -> Result<u64, QuantityError> {
    let (number, suffix) = split(value)?;
    let millis = match suffix {
        "" => number * 1000.0,
        "m" => number,
        _ => {
            return Err(err(
                value,
                "unknown suffix: use cores (0.5, 2) or millicores (500m)",
            ));
        }
    }
    .ceil();
    if millis >= 1e12 {
        return Err(err(value, "number out of range"));
    }
    if millis < 1.0 {
        return Err(err(value, "cpu must be at least 1m"));
    }
    Ok(millis as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_memory_in_exact_binary_units() {
        assert_eq!(format_memory(256 << 20), "256Mi");
        assert_eq!(format_memory(2 << 30), "2Gi");
        assert_eq!(format_memory(1536 << 10), "1536Ki");
        assert_eq!(format_memory(1_000_000), "1000000");
        for v in ["64Mi", "3Gi", "12Ki"] {
            assert_eq!(format_memory(parse_memory(v).unwrap()), v);
        }
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory("128Mi").unwrap(), 128 << 20);
        assert_eq!(parse_memory("40Mi").unwrap(), 40 << 20);
        assert_eq!(parse_memory("128M").unwrap(), 128_000_000);
        assert_eq!(parse_memory("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse_memory("1e6").unwrap(), 1_000_000);
        assert_eq!(parse_memory("1000").unwrap(), 1000);
        assert_eq!(parse_memory(" 2k ").unwrap(), 2000);
        for bad in [
            "lots",
            "",
            "12Q",
            "Mi",
            "-1Mi",
            "0",
            "1e99",
            "1.2.3Mi",
            "99999999999Ei",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu("100m").unwrap(), 100);
        assert_eq!(parse_cpu("0.5").unwrap(), 500);
        assert_eq!(parse_cpu("2").unwrap(), 2000);
        assert_eq!(parse_cpu("0.01").unwrap(), 10);
        assert_eq!(parse_cpu("0.0001").unwrap(), 1, "rounds up like Kubernetes");
        for bad in ["lots", "", "1Gi", "0", "m"] {
            assert!(parse_cpu(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_names_value_and_reason() {
        let e = parse_memory("lots").unwrap_err().to_string();
        assert!(e.contains("\"lots\"") && e.contains("128Mi"), "{e}");
    }
}
