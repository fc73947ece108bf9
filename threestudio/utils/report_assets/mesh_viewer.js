// A small self-contained WebGL viewer for the exported mesh in report.html (no library, no network).
// The page holds the mesh as JSON in <script type="application/json" id="mesh-data">: base64 little-endian
// "positions" (float32 x,y,z per vertex), "indices" (uint32, three per triangle) and optional "colors" (uint8 r,g,b
// per vertex). Drag to turn, wheel to zoom, double-click to reset; it turns slowly until touched.
// On success the canvas gets data-drawn="1" (scripts/check_report.sh checks it); without WebGL it says so.
(function () {
  "use strict";
  var canvas = document.getElementById("mesh-canvas");
  var source = document.getElementById("mesh-data");
  if (!canvas || !source) return;
  function fail(message) {
    canvas.setAttribute("data-error", message);
    var note = document.createElement("div");
    note.className = "missing";
    note.textContent = "mesh viewer: " + message + " (the files are linked below)";
    canvas.parentNode.insertBefore(note, canvas.nextSibling);
  }
  function decode(b64, Type) {
    var bytes = Uint8Array.from(atob(b64), function (c) { return c.charCodeAt(0); });
    return new Type(bytes.buffer);
  }
  var mesh = JSON.parse(source.textContent);
  var pos = decode(mesh.positions, Float32Array);
  var idx = decode(mesh.indices, Uint32Array);
  var n = pos.length / 3;
  var col = new Float32Array(n * 3);
  if (mesh.colors) {
    var c8 = decode(mesh.colors, Uint8Array);
    for (var i = 0; i < c8.length; i++) col[i] = c8[i] / 255;
  } else {
    col.fill(0.75);
  }
  // vertex normals: area-weighted sums of the face normals around each vertex
  var nrm = new Float32Array(n * 3);
  for (var f = 0; f < idx.length; f += 3) {
    var a = idx[f] * 3, b = idx[f + 1] * 3, c = idx[f + 2] * 3;
    var ux = pos[b] - pos[a], uy = pos[b + 1] - pos[a + 1], uz = pos[b + 2] - pos[a + 2];
    var vx = pos[c] - pos[a], vy = pos[c + 1] - pos[a + 1], vz = pos[c + 2] - pos[a + 2];
    var nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;
    [a, b, c].forEach(function (k) { nrm[k] += nx; nrm[k + 1] += ny; nrm[k + 2] += nz; });
  }
  // centre and size of the mesh
  var lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
  for (var v = 0; v < pos.length; v += 3) {
    for (var d = 0; d < 3; d++) { lo[d] = Math.min(lo[d], pos[v + d]); hi[d] = Math.max(hi[d], pos[v + d]); }
  }
  var centre = [0, 1, 2].map(function (d) { return (lo[d] + hi[d]) / 2; });
  var radius = Math.max(1e-6, Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) / 2);

  var gl = canvas.getContext("webgl", { preserveDrawingBuffer: true, antialias: true });
  if (!gl) { fail("this browser has no WebGL"); return; }
  if (!gl.getExtension("OES_element_index_uint")) { fail("WebGL without 32-bit indices"); return; }
  function shader(type, text) {
    var s = gl.createShader(type);
    gl.shaderSource(s, text);
    gl.compileShader(s);
    return s;
  }
  var prog = gl.createProgram();
  gl.attachShader(prog, shader(gl.VERTEX_SHADER,
    "attribute vec3 p; attribute vec3 nn; attribute vec3 c; uniform mat4 mvp; uniform mat3 rot;" +
    "varying vec3 vn; varying vec3 vc;" +
    "void main() { gl_Position = mvp * vec4(p, 1.0); vn = rot * nn; vc = c; }"));
  gl.attachShader(prog, shader(gl.FRAGMENT_SHADER,
    "precision mediump float; varying vec3 vn; varying vec3 vc;" +
    "void main() { vec3 n = normalize(vn); if (!gl_FrontFacing) n = -n;" +
    " float l = 0.35 + 0.65 * max(dot(n, normalize(vec3(0.4, 0.5, 1.0))), 0.0);" +
    " gl_FragColor = vec4(vc * l, 1.0); }"));
  gl.linkProgram(prog);
  if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) { fail("shader error " + gl.getProgramInfoLog(prog)); return; }
  gl.useProgram(prog);
  function attribute(name, data) {
    gl.bindBuffer(gl.ARRAY_BUFFER, gl.createBuffer());
    gl.bufferData(gl.ARRAY_BUFFER, data, gl.STATIC_DRAW);
    var loc = gl.getAttribLocation(prog, name);
    gl.enableVertexAttribArray(loc);
    gl.vertexAttribPointer(loc, 3, gl.FLOAT, false, 0, 0);
  }
  attribute("p", pos);
  attribute("nn", nrm);
  attribute("c", col);
  gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, gl.createBuffer());
  gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, idx, gl.STATIC_DRAW);
  gl.enable(gl.DEPTH_TEST);

  // column-major 4x4 helpers
  function mul(a, b) {
    var o = new Float32Array(16);
    for (var i = 0; i < 4; i++) for (var j = 0; j < 4; j++) {
      var s = 0;
      for (var k = 0; k < 4; k++) s += a[k * 4 + j] * b[i * 4 + k];
      o[i * 4 + j] = s;
    }
    return o;
  }
  var yaw = 0.6, pitch = -0.35, zoom = 1, spinning = true;
  function draw() {
    var cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
    // world z-up (the pipeline's convention) → view: turn about z by yaw, tip by pitch, then look along -z
    var rz = [cy, sy, 0, 0, -sy, cy, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
    var up = [1, 0, 0, 0, 0, 0, -1, 0, 0, 1, 0, 0, 0, 0, 0, 1]; // z-up → y-up
    var rx = [1, 0, 0, 0, 0, cp, sp, 0, 0, -sp, cp, 0, 0, 0, 0, 1];
    var rot = mul(rx, mul(up, rz));
    var s = 1 / radius;
    var centreM = [s, 0, 0, 0, 0, s, 0, 0, 0, 0, s, 0, -centre[0] * s, -centre[1] * s, -centre[2] * s, 1];
    var dist = 3.2 / zoom, f = 1 / Math.tan(0.35), aspect = canvas.width / canvas.height, near = 0.1, far = 20;
    var view = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, -dist, 1];
    var proj = [f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) / (near - far), -1,
                0, 0, 2 * far * near / (near - far), 0];
    var mvp = mul(proj, mul(view, mul(rot, centreM)));
    gl.viewport(0, 0, canvas.width, canvas.height);
    gl.clearColor(0.96, 0.96, 0.96, 1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.uniformMatrix4fv(gl.getUniformLocation(prog, "mvp"), false, mvp);
    gl.uniformMatrix3fv(gl.getUniformLocation(prog, "rot"), false,
      [rot[0], rot[1], rot[2], rot[4], rot[5], rot[6], rot[8], rot[9], rot[10]]);
    gl.drawElements(gl.TRIANGLES, idx.length, gl.UNSIGNED_INT, 0);
    if (gl.getError() === gl.NO_ERROR) canvas.setAttribute("data-drawn", "1");
  }
  var last = null;
  canvas.addEventListener("pointerdown", function (e) { last = [e.clientX, e.clientY]; spinning = false; });
  window.addEventListener("pointerup", function () { last = null; });
  window.addEventListener("pointermove", function (e) {
    if (!last) return;
    yaw += (e.clientX - last[0]) * 0.01;
    pitch = Math.max(-1.5, Math.min(1.5, pitch + (e.clientY - last[1]) * 0.01));
    last = [e.clientX, e.clientY];
    draw();
  });
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    zoom = Math.max(0.3, Math.min(8, zoom * Math.exp(-e.deltaY * 0.001)));
    spinning = false;
    draw();
  }, { passive: false });
  canvas.addEventListener("dblclick", function () { yaw = 0.6; pitch = -0.35; zoom = 1; draw(); });
  function tick() { if (spinning) { yaw += 0.01; draw(); } requestAnimationFrame(tick); }
  draw();
  requestAnimationFrame(tick);
})();
