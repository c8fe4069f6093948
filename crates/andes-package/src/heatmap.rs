//! The bit plan drawn as an SVG heatmap: one row per decoder layer, one column per projection,
//! each cell coloured by its bits per weight and labelled with its format.

use andes_model::lora::LoraTarget;
use andes_quant::{BitPlan, QuantFormat, bits_per_weight};

/// The heatmap of `plan` (linears named `model.layers.N.<module>`); `bpw_of` gives each
/// linear's bits per weight in its format.
pub fn plan_heatmap_svg(plan: &BitPlan, bpw_of: &dyn Fn(&str, QuantFormat) -> f64) -> String {
    let cell = |entry_name: &str| -> Option<(usize, usize)> {
        let rest = entry_name.strip_prefix("model.layers.")?;
        let (layer, module) = rest.split_once('.')?;
        let column = LoraTarget::ALL
            .iter()
            .position(|t| t.module_path() == module)?;
        Some((layer.parse().ok()?, column))
    };
    let rows = plan
        .layers
        .iter()
        .filter_map(|e| cell(&e.name).map(|(r, _)| r + 1))
        .max()
        .unwrap_or(0);
    let (w, h, left, top) = (110usize, 18usize, 70usize, 60usize);
    let width = left + LoraTarget::ALL.len() * w + 20;
    let height = top + rows * h + 40;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"10\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{left}\" y=\"20\" font-size=\"14\">bit plan{}{}: bits per \
         weight (scales counted), blue 1.5 → red 8</text>\n",
        plan.target
            .as_ref()
            .map_or(String::new(), |t| format!(" for {t}")),
        plan.budget_bpw
            .map_or(String::new(), |b| format!(", budget {b} bpw")),
    );
    for (c, target) in LoraTarget::ALL.iter().enumerate() {
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            left + c * w + w / 2,
            top - 6,
            target.module_path()
        );
    }
    for r in 0..rows {
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">layer {r}</text>\n",
            left - 6,
            top + r * h + 13
        );
    }
    for entry in &plan.layers {
        let Some((r, c)) = cell(&entry.name) else {
            continue;
        };
        let bpw = bpw_of(&entry.name, entry.format);
        let t = ((bpw - 1.5) / (8.0 - 1.5)).clamp(0.0, 1.0);
        let (red, blue) = ((255.0 * t) as u8, (255.0 * (1.0 - t)) as u8);
        svg += &format!(
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"rgb({red},80,{blue})\" \
             stroke=\"white\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"white\">{} \
             ({bpw:.2})</text>\n",
            left + c * w,
            top + r * h,
            w,
            h,
            left + c * w + w / 2,
            top + r * h + 13,
            entry.format
        );
    }
    svg + "</svg>\n"
}

/// Bits per weight of `format` on a `[out, in]` matrix.
pub fn format_bpw(format: QuantFormat, out_features: usize, in_features: usize) -> f64 {
    bits_per_weight(
        format,
        andes_quant::WeightShape::new(out_features, in_features),
    )
    .bpw
}
