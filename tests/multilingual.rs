//! Chinese, Japanese and mixed English–Chinese documents over real HTTP: the language
//! fixtures (a Chinese PDF, Chinese Markdown, traditional-Chinese text, Japanese text, a mixed
//! English–Chinese manual) are uploaded in one request with English and CJK distractors. The
//! planted sentence of each is the first hit in keyword and in hybrid mode, also when the
//! query is written in the other Chinese script; the mixed manual is found by an English and
//! by a Chinese query; and `/ask` answers a Chinese question from the passage that holds the
//! answer (the default embedder reads no Chinese) while still refusing one the documents do
//! not answer.

use std::time::Duration;

use crate::common::fixture;
use crate::common::server::Server;
use serde_json::{json, Value};

const FIXTURES: [&str; 5] = ["chinese.pdf", "chinese.md", "traditional.txt", "japanese.txt", "mixed.md"];

/// English fixtures uploaded beside them.
const ENGLISH_DISTRACTORS: [&str; 3] = ["handbook.pdf", "guide.md", "notes.txt"];

/// Distractors written here: the same scripts and many of the same words as the fixtures
/// (library, opening hours, visitors, tea, picking, telescope, groups, pump, grease), none of
/// the planted facts.
const CJK_DISTRACTORS: [(&str, &str); 4] = [
    (
        "library-news.md",
        "# 市立图书馆通讯\n\n市立图书馆的报刊阅览室每周一上午九点对外开放，参观者无须登记。\n\n\
         图书馆的自习室在考试周延长开放时间，读者须凭读者证入馆。古籍展览厅暂停开放。\n",
    ),
    (
        "pump-station.txt",
        "东湖泵站运行日志\n\n东湖泵站的三号水泵每月由外包单位检修一次，轴承使用普通锂基润滑脂。\n\n\
         水泵房的集合点在西门内侧的消防栓旁。值班人员每两小时巡检一次。\n",
    ),
    (
        "lishan-tea.txt",
        "梨山茶廠導覽說明\n\n梨山茶廠的冬茶每年十一月採收，春茶則在穀雨前後採收。\n\n\
         參訪茶廠的旅客請於三天前預約，品茶室週一公休。\n",
    ),
    (
        "minami-observatory.txt",
        "南十字天文台の見学案内\n\n南十字天文台の小型望遠鏡は毎週金曜日の夜に市民向けに公開される。\n\n\
         見学の団体は一か月前までにウェブで申し込むこと。駐車場は二十台分ある。\n",
    ),
];

/// The heading path of the mixed manual's battery section.
const BATTERIES: &str = "Aurora-5 Drone Field Manual / 极光-5 无人机外场手册 › Batteries / 电池";

/// (query, file the first hit must come from, text that hit must hold, its location: the PDF
/// page, the Markdown heading path, none for plain text).
const FACTS: &[(&str, &str, &str, Option<&str>)] = &[
    // chinese.pdf, page 2, simplified like the document, then in traditional script.
    ("青岚-7 型水泵的叶轮每运行多少小时保养一次？", "chinese.pdf", "两千四百小时", Some("page 2")),
    ("青嵐-7 型水泵的葉輪每運行多少小時保養一次？", "chinese.pdf", "两千四百小时", Some("page 2")),
    // chinese.md.
    (
        "紫藤图书馆的古籍修复室什么时候对外开放？",
        "chinese.md",
        "每周三下午两点",
        Some("紫藤图书馆读者手册 › 特藏服务 › 古籍修复室"),
    ),
    (
        "紫藤圖書館的古籍修復室什麼時候對外開放？",
        "chinese.md",
        "每周三下午两点",
        Some("紫藤图书馆读者手册 › 特藏服务 › 古籍修复室"),
    ),
    // traditional.txt, traditional like the document, then in simplified script.
    ("龍潭茶園的高山烏龍茶什麼時候採摘？", "traditional.txt", "清明節前採摘", None),
    ("龙潭茶园的高山乌龙茶什么时候采摘？", "traditional.txt", "清明節前採摘", None),
    // japanese.txt.
    ("北斗観測所の大型望遠鏡はいつ一般公開されますか？", "japanese.txt", "毎月第二土曜日", None),
    // mixed.md, by an English and by a Chinese query (and the Chinese one in traditional).
    (
        "After how many flight cycles must the Aurora-5 drone battery be replaced?",
        "mixed.md",
        "300 flight cycles",
        Some(BATTERIES),
    ),
    ("极光-5 无人机的电池完成多少次飞行循环后必须更换？", "mixed.md", "三百次飞行循环", Some(BATTERIES)),
    ("極光-5 無人機的電池完成多少次飛行循環後必須更換？", "mixed.md", "三百次飞行循环", Some(BATTERIES)),
];

fn server(dir: &std::path::Path) -> Server {
    let path = dir.join("kb.toml");
    // Extractive answers: the test is about retrieval and the refusal decision, not the model.
    std::fs::write(&path, "generator = \"none\"\n").unwrap();
    Server::start_with(&dir.join("data"), Some(&path))
}

fn ask(server: &Server, question: &str) -> Value {
    let (status, body) = server.post_json("/v1/collections/langs/ask", &json!({"question": question}));
    assert_eq!(status, 200, "{question:?}: {body}");
    body
}

#[test]
fn planted_sentences_are_found_first_in_either_chinese_script_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    server.create_collection("langs");
    let mut files: Vec<(&str, Vec<u8>)> =
        FIXTURES.iter().chain(ENGLISH_DISTRACTORS.iter()).map(|n| (*n, fixture(n))).collect();
    files.extend(CJK_DISTRACTORS.iter().map(|(n, text)| (*n, text.as_bytes().to_vec())));
    let parts: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let (status, body) = server.upload("langs", &parts);
    assert_eq!(status, 202, "{body}");
    let docs = server.wait_idle("langs", Duration::from_secs(300));
    assert_eq!(docs.len(), files.len(), "{docs:#?}");
    for d in &docs {
        assert_eq!(d["status"], "done", "{d:#}");
    }

    for (query, file, holds, location) in FACTS {
        for mode in ["keyword", "hybrid"] {
            let hits = server.search("langs", query, mode, 5);
            let top = hits.first().unwrap_or_else(|| panic!("{mode}: no hit for {query:?}"));
            assert_eq!(top["filename"], *file, "{mode}: {query:?} found first {top:#}");
            let text = top["text"].as_str().unwrap_or_default();
            assert!(text.contains(holds), "{mode}: {query:?}: the first hit lacks {holds:?}: {text:?}");
            assert_eq!(top["location"].as_str(), *location, "{mode}: {query:?} located at {top:#}");
        }
    }

    // A Chinese question is answered from the passage that holds the answer, in either
    // script, although the embedder reads no Chinese: the refusal does not rest on the vector
    // side alone.
    for (question, file, holds) in [
        ("紫藤图书馆的古籍修复室什么时候对外开放？", "chinese.md", "每周三下午两点"),
        ("龍潭茶園的高山烏龍茶什麼時候採摘？", "traditional.txt", "清明節前採摘"),
        ("龙潭茶园的高山乌龙茶什么时候采摘？", "traditional.txt", "清明節前採摘"),
        ("青岚-7 型水泵的叶轮每运行多少小时保养一次？", "chinese.pdf", "两千四百小时"),
    ] {
        let a = ask(&server, question);
        assert_ne!(a["kind"], "not_in_corpus", "{question:?} refused: {a:#}");
        assert_eq!(a["citations"][0]["filename"], file, "{question:?}: {a:#}");
        let answer = a["answer"].as_str().unwrap_or_default();
        assert!(answer.contains(holds), "{question:?}: the answer lacks {holds:?}: {a:#}");
    }
    // A Chinese question the documents do not answer is still refused, and so is an English one.
    for question in ["火星上第一座城市的市长叫什么名字？", "Who was the first mayor of the first city on Mars?"]
    {
        let a = ask(&server, question);
        assert_eq!(a["kind"], "not_in_corpus", "{question:?} answered: {a:#}");
        assert!(a["citations"].as_array().is_some_and(Vec::is_empty), "{a:#}");
    }
    server.assert_healthy();
}
