//! Where the synthetic families live: a modest embedded list of real IBGE municipality codes.
//!
//! Source: IBGE's territorial division (Divisão Territorial Brasileira,
//! `docs/sources.md#ibge-dtb`) codes of the 27 state capitals, a dozen other large municipalities,
//! and 1100015 (Alta Floresta D'Oeste, a worked vector in `docs/rules.md#test-vectors`). Every code
//! is checked against the published check-digit rule by the tests
//! (`ponte_domain::ids::IbgeMunicipality::parse`). The weights are rough population sizes in
//! thousands, used only to give the population a skewed geography; they are not the programme's
//! distribution of families (which the sources do not give per municipality).

/// A municipality: IBGE code, name, weight.
#[derive(Debug, Clone, Copy)]
pub struct Municipality {
    pub code: &'static str,
    pub name: &'static str,
    pub weight: f64,
}

const fn m(code: &'static str, name: &'static str, weight: f64) -> Municipality {
    Municipality { code, name, weight }
}

/// The embedded municipalities.
pub const MUNICIPALITIES: &[Municipality] = &[
    m("1100205", "Porto Velho", 460.0),
    m("1100015", "Alta Floresta D'Oeste", 22.0),
    m("1200401", "Rio Branco", 364.0),
    m("1302603", "Manaus", 2063.0),
    m("1400100", "Boa Vista", 413.0),
    m("1501402", "Belém", 1303.0),
    m("1500800", "Ananindeua", 478.0),
    m("1600303", "Macapá", 442.0),
    m("1721000", "Palmas", 302.0),
    m("2111300", "São Luís", 1037.0),
    m("2211001", "Teresina", 866.0),
    m("2304400", "Fortaleza", 2428.0),
    m("2303709", "Caucaia", 355.0),
    m("2408102", "Natal", 751.0),
    m("2507507", "João Pessoa", 833.0),
    m("2504009", "Campina Grande", 419.0),
    m("2611606", "Recife", 1488.0),
    m("2607901", "Jaboatão dos Guararapes", 644.0),
    m("2609600", "Olinda", 349.0),
    m("2704302", "Maceió", 957.0),
    m("2800308", "Aracaju", 602.0),
    m("2927408", "Salvador", 2418.0),
    m("2910800", "Feira de Santana", 616.0),
    m("3106200", "Belo Horizonte", 2315.0),
    m("3118601", "Contagem", 621.0),
    m("3205309", "Vitória", 322.0),
    m("3304557", "Rio de Janeiro", 6211.0),
    m("3304904", "São Gonçalo", 896.0),
    m("3301702", "Duque de Caxias", 808.0),
    m("3550308", "São Paulo", 11451.0),
    m("3509502", "Campinas", 1139.0),
    m("3518800", "Guarulhos", 1291.0),
    m("4106902", "Curitiba", 1773.0),
    m("4205407", "Florianópolis", 537.0),
    m("4314902", "Porto Alegre", 1332.0),
    m("5002704", "Campo Grande", 898.0),
    m("5103403", "Cuiabá", 650.0),
    m("5208707", "Goiânia", 1437.0),
    m("5300108", "Brasília", 2817.0),
];

/// Cumulative weights of [`MUNICIPALITIES`], for drawing.
pub fn cumulative_weights() -> Vec<f64> {
    let mut acc = 0.0;
    MUNICIPALITIES
        .iter()
        .map(|m| {
            acc += m.weight;
            acc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ponte_domain::ids::IbgeMunicipality;

    #[test]
    fn every_code_passes_the_check_digit_rule() {
        for m in MUNICIPALITIES {
            assert!(
                IbgeMunicipality::parse(m.code).is_ok(),
                "{} ({}) fails the IBGE check digit",
                m.code,
                m.name
            );
        }
    }

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<_> = MUNICIPALITIES.iter().map(|m| m.code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), MUNICIPALITIES.len());
    }
}
