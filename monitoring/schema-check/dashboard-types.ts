// The shapes a dashboard file is checked against: Grafana's own types from @grafana/schema, as JSON can
// write them. check.mjs turns a dashboard file into TypeScript constants of these types and runs tsc on them.

import type { Dashboard } from "@grafana/schema";
import type * as raw from "@grafana/schema/dist/esm/raw/dashboard/x/Dashboard_types.gen";
import type * as annolist from "@grafana/schema/dist/esm/raw/composable/annotationslist/panelcfg/x/AnnotationsListPanelCfg_types.gen";
import type * as barchart from "@grafana/schema/dist/esm/raw/composable/barchart/panelcfg/x/BarChartPanelCfg_types.gen";
import type * as bargauge from "@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen";
import type * as candlestick from "@grafana/schema/dist/esm/raw/composable/candlestick/panelcfg/x/CandlestickPanelCfg_types.gen";
import type * as canvas from "@grafana/schema/dist/esm/raw/composable/canvas/panelcfg/x/CanvasPanelCfg_types.gen";
import type * as dashlist from "@grafana/schema/dist/esm/raw/composable/dashboardlist/panelcfg/x/DashboardListPanelCfg_types.gen";
import type * as gauge from "@grafana/schema/dist/esm/raw/composable/gauge/panelcfg/x/GaugePanelCfg_types.gen";
import type * as geomap from "@grafana/schema/dist/esm/raw/composable/geomap/panelcfg/x/GeomapPanelCfg_types.gen";
import type * as heatmap from "@grafana/schema/dist/esm/raw/composable/heatmap/panelcfg/x/HeatmapPanelCfg_types.gen";
import type * as histogram from "@grafana/schema/dist/esm/raw/composable/histogram/panelcfg/x/HistogramPanelCfg_types.gen";
import type * as logs from "@grafana/schema/dist/esm/raw/composable/logs/panelcfg/x/LogsPanelCfg_types.gen";
import type * as news from "@grafana/schema/dist/esm/raw/composable/news/panelcfg/x/NewsPanelCfg_types.gen";
import type * as nodegraph from "@grafana/schema/dist/esm/raw/composable/nodegraph/panelcfg/x/NodeGraphPanelCfg_types.gen";
import type * as piechart from "@grafana/schema/dist/esm/raw/composable/piechart/panelcfg/x/PieChartPanelCfg_types.gen";
import type * as stat from "@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen";
import type * as statetimeline from "@grafana/schema/dist/esm/raw/composable/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen";
import type * as statushistory from "@grafana/schema/dist/esm/raw/composable/statushistory/panelcfg/x/StatusHistoryPanelCfg_types.gen";
import type * as table from "@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen";
import type * as text from "@grafana/schema/dist/esm/raw/composable/text/panelcfg/x/TextPanelCfg_types.gen";
import type * as timeseries from "@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen";
import type * as trend from "@grafana/schema/dist/esm/raw/composable/trend/panelcfg/x/TrendPanelCfg_types.gen";
import type * as xychart from "@grafana/schema/dist/esm/raw/composable/xychart/panelcfg/x/XYChartPanelCfg_types.gen";

/**
 * `T` as a JSON file writes it. Grafana's types use string enums, which only an enum member satisfies in
 * TypeScript; JSON holds their values, so each string enum becomes the union of its values. Everything else,
 * optional and required keys included, is kept as it is.
 */
export type Json<T> = 0 extends 1 & T
  ? T
  : unknown extends T
    ? T
    : T extends string
      ? `${T}`
      : T extends ReadonlyArray<infer Item>
        ? Array<Json<Item>>
        : T extends object
          ? { [Key in keyof T]: Json<T[Key]> }
          : T;

/** A panel type without custom field options: `custom` may only be empty. */
type NoCustomFieldConfig = Record<string, never>;

/** Grafana's panel type ids and the types of their `options` and `fieldConfig.defaults.custom`. */
export interface PanelTypes {
  annolist: { options: annolist.Options; custom: NoCustomFieldConfig };
  barchart: { options: barchart.Options; custom: barchart.FieldConfig };
  bargauge: { options: bargauge.Options; custom: NoCustomFieldConfig };
  candlestick: { options: candlestick.Options; custom: candlestick.FieldConfig };
  canvas: { options: canvas.Options; custom: NoCustomFieldConfig };
  dashlist: { options: dashlist.Options; custom: NoCustomFieldConfig };
  gauge: { options: gauge.Options; custom: NoCustomFieldConfig };
  geomap: { options: geomap.Options; custom: NoCustomFieldConfig };
  heatmap: { options: heatmap.Options; custom: heatmap.FieldConfig };
  histogram: { options: histogram.Options; custom: histogram.FieldConfig };
  logs: { options: logs.Options; custom: NoCustomFieldConfig };
  news: { options: news.Options; custom: NoCustomFieldConfig };
  nodeGraph: { options: nodegraph.Options; custom: NoCustomFieldConfig };
  piechart: { options: piechart.Options; custom: piechart.FieldConfig };
  stat: { options: stat.Options; custom: NoCustomFieldConfig };
  "state-timeline": { options: statetimeline.Options; custom: statetimeline.FieldConfig };
  "status-history": { options: statushistory.Options; custom: statushistory.FieldConfig };
  table: { options: table.Options; custom: table.FieldConfig };
  text: { options: text.Options; custom: NoCustomFieldConfig };
  timeseries: { options: timeseries.Options; custom: timeseries.FieldConfig };
  trend: { options: trend.Options; custom: trend.FieldConfig };
  xychart: { options: xychart.Options; custom: xychart.FieldConfig };
}

/**
 * A panel of type `Type`: Grafana's generic panel, whose `options` and `custom` are any record, narrowed to
 * that panel type's own types. A type id missing from `PanelTypes` fails the constraint.
 */
export type TypedPanel<Type extends keyof PanelTypes> = Json<Omit<raw.Panel, "type" | "options" | "fieldConfig">> & {
  type: Type;
  options?: Json<PanelTypes[Type]["options"]>;
  fieldConfig?: Json<Omit<raw.FieldConfigSource, "defaults">> & {
    defaults: Json<Omit<raw.FieldConfig, "custom">> & { custom?: Json<PanelTypes[Type]["custom"]> };
  };
};

/** Any typed panel, for a row's panels. */
export type AnyPanel = { [Type in keyof PanelTypes]: TypedPanel<Type> }[keyof PanelTypes];

/** A row, holding its collapsed panels. */
export type TypedRow = Json<Omit<raw.RowPanel, "panels">> & { panels: AnyPanel[] };

/**
 * What Grafana's export adds around a dashboard for sharing: the inputs asked for at import (`${NAME}` in the
 * dashboard is replaced by the answer), the library panels it embeds and the plugins it needs.
 * @grafana/schema has no type for it; these follow Grafana's dashboard exporter.
 */
export interface ExportEnvelope {
  __inputs: Array<{
    name: string;
    label: string;
    description?: string;
    type: "datasource" | "constant";
    pluginId?: string;
    pluginName?: string;
    value?: string;
  }>;
  __elements: Record<string, unknown>;
  __requires: Array<{
    type: "grafana" | "datasource" | "panel";
    id: string;
    name: string;
    version: string;
  }>;
}

/** An exported dashboard file: Grafana's `Dashboard` plus the export envelope. */
export type DashboardFile = Json<Dashboard> & ExportEnvelope;
