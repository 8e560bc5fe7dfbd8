"use strict";(self.rspackChunkclacky_ipy=self.rspackChunkclacky_ipy||[]).push([[700],{646(e,t,r){var n=r(601),a=r.n(n),o=r(314),c=(r.n(o))()(a());c.push([e.id,`/* clacky-ipy: the status-bar item and the dialog. */
.clacky-telemetry-item {
  cursor: pointer;
  padding: 0 6px;
}

.clacky-telemetry-item:hover {
  background-color: var(--jp-layout-color2);
}

.clacky-telemetry-dialog {
  max-width: 640px;
}

.clacky-telemetry-dialog h3 {
  font-size: var(--jp-ui-font-size1);
  margin: 12px 0 4px;
}

.clacky-telemetry-notice {
  white-space: pre-wrap;
  font-family: var(--jp-ui-font-family);
  font-size: var(--jp-ui-font-size1);
  margin: 0;
}

.clacky-telemetry-payload {
  white-space: pre-wrap;
  font-size: var(--jp-code-font-size);
  font-family: var(--jp-code-font-family);
}

.clacky-telemetry-payload {
  display: block;
  word-break: break-all;
}

.clacky-telemetry-docs {
  color: var(--jp-content-link-color);
  text-decoration: underline;
}

.clacky-telemetry-problem {
  color: var(--jp-warn-color0);
}

.clacky-telemetry-events-list {
  max-height: 200px;
  overflow: auto;
  padding-left: 20px;
}
`,""]),r.d(t,{},{A:c})},314(e){e.exports=function(e){var t=[];return t.toString=function(){return this.map(function(t){var r="",n=void 0!==t[5];return t[4]&&(r+="@supports (".concat(t[4],") {")),t[2]&&(r+="@media ".concat(t[2]," {")),n&&(r+="@layer".concat(t[5].length>0?" ".concat(t[5]):""," {")),r+=e(t),n&&(r+="}"),t[2]&&(r+="}"),t[4]&&(r+="}"),r}).join("")},t.i=function(e,r,n,a,o){"string"==typeof e&&(e=[[null,e,void 0]]);var c={};if(n)for(var i=0;i<this.length;i++){var s=this[i][0];null!=s&&(c[s]=!0)}for(var l=0;l<e.length;l++){var p=[].concat(e[l]);n&&c[p[0]]||(void 0!==o&&(void 0===p[5]||(p[1]="@layer".concat(p[5].length>0?" ".concat(p[5]):""," {").concat(p[1],"}")),p[5]=o),r&&(p[2]&&(p[1]="@media ".concat(p[2]," {").concat(p[1],"}")),p[2]=r),a&&(p[4]?(p[1]="@supports (".concat(p[4],") {").concat(p[1],"}"),p[4]=a):p[4]="".concat(a)),t.push(p))}},t}},601(e){e.exports=function(e){return e[1]}},72(e){var t=[];function r(e){for(var r=-1,n=0;n<t.length;n++)if(t[n].identifier===e){r=n;break}return r}function n(e,n){for(var a={},o=[],c=0;c<e.length;c++){var i=e[c],s=n.base?i[0]+n.base:i[0],l=a[s]||0,p="".concat(s," ").concat(l);a[s]=l+1;var u=r(p),d={css:i[1],media:i[2],sourceMap:i[3],supports:i[4],layer:i[5]};if(-1!==u)t[u].references++,t[u].updater(d);else{var f=function(e,t){var r=t.domAPI(t);return r.update(e),function(t){t?(t.css!==e.css||t.media!==e.media||t.sourceMap!==e.sourceMap||t.supports!==e.supports||t.layer!==e.layer)&&r.update(e=t):r.remove()}}(d,n);n.byIndex=c,t.splice(c,0,{identifier:p,updater:f,references:1})}o.push(p)}return o}e.exports=function(e,a){var o=n(e=e||[],a=a||{});return function(e){e=e||[];for(var c=0;c<o.length;c++){var i=r(o[c]);t[i].references--}for(var s=n(e,a),l=0;l<o.length;l++){var p=r(o[l]);0===t[p].references&&(t[p].updater(),t.splice(p,1))}o=s}}},659(e){var t={};e.exports=function(e,r){var n=function(e){if(void 0===t[e]){var r=document.querySelector(e);if(window.HTMLIFrameElement&&r instanceof window.HTMLIFrameElement)try{r=r.contentDocument.head}catch(e){r=null}t[e]=r}return t[e]}(e);if(!n)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");n.appendChild(r)}},540(e){e.exports=function(e){var t=document.createElement("style");return e.setAttributes(t,e.attributes),e.insert(t,e.options),t}},56(e,t,r){e.exports=function(e){var t=r.nc;t&&e.setAttribute("nonce",t)}},825(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var t=e.insertStyleElement(e);return{update:function(r){var n,a,o;n="",r.supports&&(n+="@supports (".concat(r.supports,") {")),r.media&&(n+="@media ".concat(r.media," {")),(a=void 0!==r.layer)&&(n+="@layer".concat(r.layer.length>0?" ".concat(r.layer):""," {")),n+=r.css,a&&(n+="}"),r.media&&(n+="}"),r.supports&&(n+="}"),(o=r.sourceMap)&&"u">typeof btoa&&(n+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(o))))," */")),e.styleTagTransform(n,t,e.options)},remove:function(){var e;null===(e=t).parentNode||e.parentNode.removeChild(e)}}}},113(e){e.exports=function(e,t){if(t.styleSheet)t.styleSheet.cssText=e;else{for(;t.firstChild;)t.removeChild(t.firstChild);t.appendChild(document.createTextNode(e))}}},959(e,t,r){var n=r(72),a=r.n(n),o=r(825),c=r.n(o),i=r(659),s=r.n(i),l=r(56),p=r.n(l),u=r(540),d=r.n(u),f=r(113),y=r.n(f),m=r(646),v={};v.styleTagTransform=y(),v.setAttributes=p(),v.insert=s().bind(null,"head"),v.domAPI=c(),v.insertStyleElement=d(),a()(m.A,v),m.A&&m.A.locals&&m.A.locals}}]);