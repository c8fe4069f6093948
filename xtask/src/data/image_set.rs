//! One image set as files, in the shape of the digits set (datasets/README.md): the PNGs,
//! captions and conversations of each split, the held-out evaluation tasks and the licence
//! notices of the material.

use std::path::PathBuf;

use anyhow::{Context, bail};
use image::{Rgb, RgbImage, RgbaImage};

use super::seeded::SeededRng;
use super::write_jsonl;
use crate::workspace::root;

/// One image with what is said about it.
pub(crate) struct Example {
    /// The picture, stored as `png/NNNN.png`.
    pub image: RgbImage,
    /// Its line in `captions-<split>.jsonl`; `None` for an image that one sentence does not
    /// describe well (a grid of several icons), which then appears in conversations only.
    pub caption: Option<String>,
    /// What the user asks about the image (after the `<image>` line).
    pub question: String,
    /// The assistant's reply in `chat-<split>.jsonl`.
    pub reply: String,
}

/// How a held-out example is scored by the evaluation harness (`task-eval.jsonl`).
pub(crate) enum Task {
    /// Multiple choice: the index of the right one of `choices`.
    Choice { choices: Vec<String>, answer: usize },
    /// Generation, scored by exact match with the answer.
    Exact(String),
}

/// A held-out example and its task.
pub(crate) struct HeldOut {
    /// The image, its caption and its conversation.
    pub example: Example,
    /// The task record made from it.
    pub task: Task,
}

/// A whole set, ready to write.
pub(crate) struct ImageSet {
    /// The set's folder, relative to the repository root.
    pub folder: &'static str,
    /// The examples training reads.
    pub train: Vec<Example>,
    /// The held-out examples, disjoint in content from `train`.
    pub eval: Vec<HeldOut>,
    /// Licence notices: the file name in the set's folder and the file copied there.
    pub notices: Vec<(String, PathBuf)>,
}

impl ImageSet {
    /// Writes the set: `png/` anew (train images first, then held-out, numbered from 0000),
    /// `captions-*.jsonl`, `chat-*.jsonl`, `task-eval.jsonl` and the notices.
    pub(crate) fn write(&self) -> anyhow::Result<()> {
        let folder = root().join(self.folder);
        let png_dir = folder.join("png");
        // Anew, so that no image of an earlier, larger run stays behind.
        if png_dir.exists() {
            std::fs::remove_dir_all(&png_dir)
                .with_context(|| format!("clearing {}", png_dir.display()))?;
        }
        std::fs::create_dir_all(&png_dir)
            .with_context(|| format!("creating {}", png_dir.display()))?;
        let held_out: Vec<&Example> = self.eval.iter().map(|h| &h.example).collect();
        let train: Vec<&Example> = self.train.iter().collect();
        let mut png_bytes = 0;
        let mut index = 0;
        for (split, examples) in [("train", train), ("eval", held_out)] {
            let mut captions = Vec::new();
            let mut chats = Vec::new();
            for example in examples {
                let name = format!("png/{index:04}.png");
                index += 1;
                let png = encode_png(&example.image)?;
                png_bytes += png.len();
                std::fs::write(folder.join(&name), &png)
                    .with_context(|| format!("writing {}/{name}", self.folder))?;
                if let Some(caption) = &example.caption {
                    captions.push(serde_json::json!({"image": name, "caption": caption}));
                }
                chats.push(serde_json::json!({
                    "messages": [
                        {"role": "user", "content": format!("<image>\n{}", example.question)},
                        {"role": "assistant", "content": example.reply},
                    ],
                    "images": [name],
                }));
            }
            write_jsonl(&format!("{}/captions-{split}.jsonl", self.folder), captions)?;
            write_jsonl(&format!("{}/chat-{split}.jsonl", self.folder), chats)?;
        }
        let first_held_out = self.train.len();
        let tasks = self
            .eval
            .iter()
            .enumerate()
            .map(|(i, held)| {
                let prompt = format!("<image>\n{}", held.example.question);
                let image = format!("png/{:04}.png", first_held_out + i);
                match &held.task {
                    Task::Choice { choices, answer } => serde_json::json!({
                        "prompt": prompt, "choices": choices, "answer": answer, "images": [image],
                    }),
                    Task::Exact(answer) => serde_json::json!({
                        "prompt": prompt, "answer": answer, "images": [image],
                    }),
                }
            })
            .collect();
        write_jsonl(&format!("{}/task-eval.jsonl", self.folder), tasks)?;
        for (name, source) in &self.notices {
            std::fs::copy(source, folder.join(name))
                .with_context(|| format!("copying {} to {}", source.display(), name))?;
        }
        println!("{}/png: {index} images, {png_bytes} bytes", self.folder);
        Ok(())
    }
}

/// A four-way multiple choice: `right` and three other distinct labels of `pool` (the same
/// split's labels), the right one at a random position.
pub(crate) fn multiple_choice(rng: &mut SeededRng, right: &str, pool: &[String]) -> Task {
    let mut others: Vec<&String> = pool.iter().filter(|label| *label != right).collect();
    others.sort();
    others.dedup();
    rng.shuffle(&mut others);
    let mut choices: Vec<String> = others.into_iter().take(3).cloned().collect();
    let answer = rng.below(choices.len() + 1);
    choices.insert(answer, right.to_string());
    Task::Choice { choices, answer }
}

/// The PNG of `image` as an 8-bit palette image, the smallest form PNG has for these
/// pictures (a third of the bytes of RGB): exact when the image has at most 256 colours (most
/// text images), otherwise reduced to 256 colours by NeuQuant (icons and emoji, where the
/// difference is a shade in a gradient). The same pixels always give the same bytes, which
/// keeps a rerun of `cargo xtask data` from changing the files.
fn encode_png(image: &RgbImage) -> anyhow::Result<Vec<u8>> {
    let (palette, indices) = palette_and_indices(image);
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, image.width(), image.height());
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(palette);
    encoder.set_compression(png::Compression::High);
    encoder.set_filter(png::Filter::NoFilter);
    let mut writer = encoder.write_header().context("encoding a PNG")?;
    writer
        .write_image_data(&indices)
        .context("encoding a PNG")?;
    writer.finish().context("encoding a PNG")?;
    Ok(bytes)
}

/// The palette (RGB triples) of `image` and each pixel's index into it.
fn palette_and_indices(image: &RgbImage) -> (Vec<u8>, Vec<u8>) {
    let colours: std::collections::BTreeSet<[u8; 3]> = image.pixels().map(|p| p.0).collect();
    if colours.len() <= 256 {
        let index: std::collections::BTreeMap<[u8; 3], u8> = colours
            .iter()
            .enumerate()
            .map(|(i, colour)| (*colour, i as u8))
            .collect();
        let palette = colours.into_iter().flatten().collect();
        let indices = image.pixels().map(|p| index[&p.0]).collect();
        return (palette, indices);
    }
    let rgba: Vec<u8> = image
        .pixels()
        .flat_map(|p| [p[0], p[1], p[2], u8::MAX])
        .collect();
    // Sample factor 1: every pixel trains the network (the best quality NeuQuant has).
    let quantizer = color_quant::NeuQuant::new(1, 256, &rgba);
    let indices = rgba
        .chunks_exact(4)
        .map(|pixel| quantizer.index_of(pixel) as u8)
        .collect();
    (quantizer.color_map_rgb(), indices)
}

/// Checks that no label of `held_out` is among `train`'s, the promise of every set's README.
pub(crate) fn check_disjoint(
    set: &str,
    train: &[String],
    held_out: &[String],
) -> anyhow::Result<()> {
    let train: std::collections::HashSet<&String> = train.iter().collect();
    if let Some(shared) = held_out.iter().find(|label| train.contains(label)) {
        bail!("{set}: {shared:?} is in both the train and the held-out split");
    }
    Ok(())
}

/// `picture` drawn over a plain `background` by its alpha: the sets store RGB, as the model
/// reads it.
pub(crate) fn flatten(picture: &RgbaImage, background: Rgb<u8>) -> RgbImage {
    RgbImage::from_fn(picture.width(), picture.height(), |x, y| {
        let pixel = picture.get_pixel(x, y);
        let alpha = u32::from(pixel[3]);
        Rgb(std::array::from_fn(|i| {
            ((u32::from(pixel[i]) * alpha + u32::from(background[i]) * (255 - alpha) + 127) / 255)
                as u8
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_choice_holds_the_right_label_and_three_others() {
        let pool: Vec<String> = ["folder", "printer", "clock", "trash", "folder", "mouse"]
            .map(String::from)
            .to_vec();
        let mut rng = SeededRng::new(7);
        for _ in 0..50 {
            let Task::Choice { choices, answer } = multiple_choice(&mut rng, "folder", &pool)
            else {
                panic!("not a choice");
            };
            assert_eq!(choices.len(), 4);
            assert_eq!(choices[answer], "folder");
            let mut distinct = choices.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 4, "{choices:?}");
        }
    }
}
