// robustbench_zs site: sortable tables and filters, no library, no network (works from file://)
(function () {
  "use strict";
  function value(row, i) {
    var cell = row.cells[i];
    if (!cell) return "";
    var v = cell.getAttribute("data-v");
    if (v !== null && v !== "" && !isNaN(parseFloat(v))) return parseFloat(v);
    return cell.textContent.trim().toLowerCase();
  }
  function sortTable(table, i, th) {
    var numeric = th.getAttribute("data-type") === "num";
    var current = th.getAttribute("aria-sort");
    var dir = current === "descending" ? "ascending" : current === "ascending" ? "descending" : (numeric ? "descending" : "ascending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, i), y = value(b, i);
      var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return dir === "ascending" ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    if (!table.tHead) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.addEventListener("click", function () { sortTable(table, i, th); });
    });
  });
  function applyFilters() {
    var arch = document.getElementById("filter-arch");
    var kind = document.getElementById("filter-kind");
    var a = arch ? arch.value : "", k = kind ? kind.value : "";
    document.querySelectorAll("tr[data-arch]").forEach(function (tr) {
      var hide = (a && tr.getAttribute("data-arch") !== a) || (k && tr.hasAttribute("data-kind") && tr.getAttribute("data-kind") !== k) ||
        (k && !tr.hasAttribute("data-kind"));
      tr.hidden = !!hide;
    });
  }
  ["filter-arch", "filter-kind"].forEach(function (id) {
    var el = document.getElementById(id);
    if (el) el.addEventListener("change", applyFilters);
  });
})();
